"""``notify.revoke``: a user's open streams end in every process, and their reconnects are
authorized again. In process with the embedded broker; end to end with two daphne servers
on Redis, logged in with real session cookies."""

from __future__ import annotations

import asyncio
import time

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.test import Client, override_settings

import notify
from notify.broker.local import LocalBroker
from notify.hub import Hub
from tests.conftest import Server, SSEClient, StartServer
from tests.test_asgi import stream_url
from tests.test_stream_authorization import assert_refused, session_cookie

DEFAULT = "notify.authorization.default_policy"
APPS = {
    "handler": "tests.asgi:application",
    "view": "tests.asgi_unwrapped:application",
}


@pytest.mark.django_db(transaction=True)
def test_the_hub_closes_the_streams_of_the_revoked_user_only():
    async def main() -> None:
        broker = LocalBroker()
        hub = Hub(broker)
        try:
            alice = [await hub.subscribe(["a"], "1"), await hub.subscribe(["a", "b"], "1")]
            bob = await hub.subscribe(["a"], "2")
            anonymous = await hub.subscribe(["a"])
            # "1" must not match "10", nor an anonymous stream.
            other = await hub.subscribe(["a"], "10")
            await asyncio.sleep(0.1)  # the hub's broker subscription is up
            broker.revoke("1")
            for subscriber in alice:
                await asyncio.wait_for(subscriber.wait(), 1)
                assert subscriber.closed == "revoked"
            assert bob.closed is None and anonymous.closed is None and other.closed is None
            for subscriber in alice:
                hub.unsubscribe(subscriber)
            assert set(hub.by_user) == {"2", "10"}
            broker.revoke("nobody")
            await asyncio.sleep(0.05)
            assert bob.closed is None
        finally:
            hub.close()
            await asyncio.sleep(0)

    asyncio.run(main())


def ended_within(stream: SSEClient, seconds: float) -> float:
    """How long ``stream`` took to end (it must end within ``seconds``) after its events."""
    start = time.monotonic()
    with pytest.raises(EOFError):
        while True:
            stream.next()
    took = time.monotonic() - start
    assert took < seconds
    return took


def subscribed(streams: list[SSEClient], channel: str) -> None:
    """Wait until an event published now on ``channel`` reached every stream: their servers'
    Redis subscriptions are then up. A revocation is a pub/sub message and is not stored, so
    one published while a server was still subscribing would never reach it (README, "The
    stream")."""
    event = notify.publish(channel, "subscribed")
    for stream in streams:
        assert stream.next().id == str(event.id)


def logged_in(user: User) -> tuple[Client, dict[str, str]]:
    client = Client()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    return client, {"Cookie": f"{settings.SESSION_COOKIE_NAME}={cookie}"}


@pytest.fixture(params=list(APPS))
def servers(request: pytest.FixtureRequest, start_server: StartServer) -> list[Server]:
    """Two daphne servers on the session's Redis, with the default policy."""
    return [start_server(app=APPS[request.param], AUTHORIZE=DEFAULT) for _ in range(2)]


def test_revoke_ends_the_users_streams_on_every_server(servers: list[Server]):
    alice = User.objects.create_user("alice")
    bob = User.objects.create_user("bob")
    alices = session_cookie(alice)
    url = stream_url(servers[0], f"user:{alice.pk}", "broadcast")
    streams = [
        SSEClient(stream_url(server, f"user:{alice.pk}", "broadcast"), headers={"Cookie": alices})
        for server in servers
    ]
    bobs = SSEClient(stream_url(servers[1], "broadcast"), headers={"Cookie": session_cookie(bob)})
    anonymous = SSEClient(stream_url(servers[0], "broadcast"))
    try:
        for stream in [*streams, bobs, anonymous]:
            assert stream.next().event == "notify.open"
        subscribed([*streams, bobs, anonymous], "broadcast")
        start = time.monotonic()
        notify.revoke(alice)
        for stream in streams:
            ended_within(stream, 1.0)
        assert time.monotonic() - start < 1.0
        # Everybody else's streams go on.
        event = notify.publish("broadcast", "still here")
        assert bobs.next().id == str(event.id)
        assert anonymous.next().id == str(event.id)
        # Alice may reconnect: nothing about her changed.
        with SSEClient(url, headers={"Cookie": alices}) as again:
            assert again.next().event == "notify.open"
    finally:
        for stream in [*streams, bobs, anonymous]:
            stream.close()
    for server in servers:
        assert "Traceback" not in server.output()


def test_a_reconnect_after_revoke_is_authorized_again(servers: list[Server]):
    editors = Group.objects.create(name="editors")
    alice = User.objects.create_user("alice")
    alice.groups.add(editors)
    cookie = {"Cookie": session_cookie(alice)}
    url = stream_url(servers[0], "group:editors")
    with SSEClient(url, headers=cookie) as stream:
        assert stream.next().event == "notify.open"
        alice.groups.remove(editors)
        # Leaving the group alone does not reach a stream that is open already ...
        event = notify.publish("group:editors", "still delivered")
        assert stream.next().id == str(event.id)
        notify.revoke(alice)
        ended_within(stream, 1.0)
    # ... its reconnect is refused.
    assert_refused(url, 'not allowed to read channel "group:editors"', cookie["Cookie"])


def test_logging_out_ends_the_users_streams(servers: list[Server]):
    alice = User.objects.create_user("alice")
    client, cookie = logged_in(alice)
    url = stream_url(servers[0], f"user:{alice.pk}")
    streams = [
        SSEClient(stream_url(server, f"user:{alice.pk}"), headers=cookie) for server in servers
    ]
    try:
        for stream in streams:
            assert stream.next().event == "notify.open"
        subscribed(streams, f"user:{alice.pk}")
        # django.contrib.auth.logout, which sends user_logged_out and ends the session.
        client.logout()
        for stream in streams:
            ended_within(stream, 1.0)
    finally:
        for stream in streams:
            stream.close()
    assert_refused(url, f'not allowed to read channel "user:{alice.pk}"', cookie["Cookie"])


def test_the_admins_logout_view_ends_the_streams(start_server: StartServer):
    server = start_server(AUTHORIZE=DEFAULT)
    boss = User.objects.create_user("boss", is_staff=True)
    client, cookie = logged_in(boss)
    with SSEClient(stream_url(server, "staff:alerts"), headers=cookie) as stream:
        assert stream.next().event == "notify.open"
        subscribed([stream], "staff:alerts")
        assert client.post("/admin/logout/").status_code == 200
        ended_within(stream, 1.0)


def test_allow_all_streams_have_no_user_to_revoke(start_server: StartServer):
    """Documented: with allow_all a stream reads no session, so revoke cannot find it."""
    server = start_server(AUTHORIZE="notify.authorization.allow_all")
    alice = User.objects.create_user("alice")
    _, cookie = logged_in(alice)
    with SSEClient(stream_url(server, "news"), headers=cookie) as stream:
        assert stream.next().event == "notify.open"
        notify.revoke(alice)
        time.sleep(0.3)
        event = notify.publish("news", "still open")
        assert stream.next().id == str(event.id)


@pytest.mark.django_db
def test_revoke_with_the_embedded_broker_in_another_process_reaches_nothing(settings):
    """Without Redis a revocation reaches the hubs of the calling process only; here there
    are none, and it must not fail."""
    with override_settings(NOTIFY={**settings.NOTIFY, "REDIS_URL": None}):
        notify.revoke(User.objects.create_user("alice"))
