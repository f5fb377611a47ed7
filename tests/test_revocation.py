"""``notify.revoke``: a user's open streams end in every process, and their reconnects are
authorized again. In process with the embedded broker; end to end with two daphne servers
on Redis, logged in with real session cookies."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from importlib import import_module

import httpx
import pytest
from asgiref.sync import async_to_sync
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.db import connections, transaction
from django.test import Client, override_settings
from django.urls import path
from django.utils import timezone
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as connect_websocket

import notify
from notify import revocation
from notify.authorization import session_digest
from notify.broker.local import LocalBroker
from notify.hub import Hub, get_hub, reset_hubs
from notify.models import Event
from notify.routing import websocket_application, websocket_urlpatterns
from tests.conftest import Server, SSEClient, StartServer
from tests.test_asgi import stream_url
from tests.test_stream_authorization import assert_refused, session_cookie
from tests.ws_client import ws_url

DEFAULT = "notify.authorization.default_policy"
APPS = {
    "handler": "tests.asgi:application",
    "view": "tests.asgi_unwrapped:application",
}


@pytest.mark.django_db(transaction=True)
def test_the_hub_closes_the_streams_of_the_revoked_user_only(settings):
    async def main() -> None:
        hub = Hub(LocalBroker())
        try:
            await hub.until_ready()
            alice = [await hub.subscribe(["a"], "1"), await hub.subscribe(["a", "b"], "1")]
            bob = await hub.subscribe(["a"], "2")
            anonymous = await hub.subscribe(["a"])
            # "1" must not match "10", nor an anonymous stream.
            other = await hub.subscribe(["a"], "10")
            hub.revoke(["1"])
            for subscriber in alice:
                await asyncio.wait_for(subscriber.wait(), 1)
                assert subscriber.closed == "revoked"
            assert bob.closed is None and anonymous.closed is None and other.closed is None
            for subscriber in alice:
                hub.unsubscribe(subscriber)
            assert set(hub.by_user) == {"2", "10"}
            hub.revoke(["nobody"])
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


def test_leaving_a_group_ends_the_stream_and_its_reconnect_is_refused(servers: list[Server]):
    editors = Group.objects.create(name="editors")
    alice = User.objects.create_user("alice")
    alice.groups.add(editors)
    cookie = {"Cookie": session_cookie(alice)}
    url = stream_url(servers[0], "group:editors")
    with SSEClient(url, headers=cookie) as stream:
        assert stream.next().event == "notify.open"
        subscribed([stream], "group:editors")
        alice.groups.remove(editors)
        # Removal revokes by itself: the next event of the group never reaches the stream.
        notify.publish("group:editors", "for members only")
        ended_within(stream, 1.0)
    assert_refused(url, 'not allowed to read channel "group:editors"', cookie["Cookie"])


def test_a_reconnect_after_revoke_is_authorized_again(servers: list[Server]):
    alice = User.objects.create_user("alice")
    cookie = {"Cookie": session_cookie(alice)}
    url = stream_url(servers[0], f"user:{alice.pk}")
    with SSEClient(url, headers=cookie) as stream:
        assert stream.next().event == "notify.open"
        revocation = notify.revoke(alice)
        ended_within(stream, 1.0)
    # Nothing about her changed: she reads her channel again, from her cursor.
    event = notify.publish(f"user:{alice.pk}", "after")
    with SSEClient(url, headers=cookie, last_event_id=str(revocation.id - 1)) as again:
        assert again.next().event == "notify.catchup-start"
        assert again.next().id == str(event.id)


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


def test_a_revocation_reaches_a_server_on_the_embedded_broker(start_server: StartServer):
    """The revocation is stored with the events, so a process that polls the database (the
    embedded broker, or Redis down) meets it as it meets events."""
    server = start_server(redis=None, AUTHORIZE=DEFAULT)
    alice = User.objects.create_user("alice")
    with SSEClient(
        stream_url(server, f"user:{alice.pk}"), headers={"Cookie": session_cookie(alice)}
    ) as stream:
        assert stream.next().event == "notify.open"
        notify.revoke(alice)
        ended_within(stream, 3.0)


def test_a_revocation_rolled_back_revokes_nothing(servers: list[Server]):
    alice = User.objects.create_user("alice")
    url = stream_url(servers[0], f"user:{alice.pk}")
    with SSEClient(url, headers={"Cookie": session_cookie(alice)}) as stream:
        assert stream.next().event == "notify.open"
        with pytest.raises(RuntimeError), transaction.atomic():
            notify.revoke(alice)
            raise RuntimeError("rolled back")
        event = notify.publish(f"user:{alice.pk}", "still hers")
        assert stream.next().id == str(event.id)


@pytest.mark.django_db
def test_revoke_stores_the_revocation_in_the_callers_transaction():
    alice = User.objects.create_user("alice")
    with transaction.atomic():
        revocation = notify.revoke(alice)
        assert Event.objects.filter(pk=revocation.pk).exists()
    assert (revocation.channel, revocation.event) == ("notify.revoke", "notify.revoke")
    assert revocation.data == {"users": [str(alice.pk)]}
    with pytest.raises(ValueError, match="unsaved"):
        notify.revoke(User(username="ghost"))


@pytest.mark.django_db
def test_a_big_group_is_revoked_in_rows_of_a_bounded_size():
    users = User.objects.bulk_create([User(username=f"u{n}") for n in range(2500)])
    rows = revocation.revoke_users([user.pk for user in users])
    assert [len(row.data["users"]) for row in rows] == [1000, 1000, 500]
    assert len(Event.objects.filter(channel="notify.revoke")) == 3


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("change", "revokes"),
    [
        ("password", True),
        ("inactive", True),
        ("not staff", True),
        ("made staff", False),
        ("last login", False),
        ("deferred password set", True),
        ("renamed group", True),
        ("group deleted", True),
        ("group cleared", True),
        ("user's groups cleared", True),
        ("added to a group", False),
        ("user deleted", True),
    ],
)
def test_what_notify_revokes_by_itself(change: str, revokes: bool):
    """Every change that may narrow what the default policy lets a user read, or that ends
    their sessions, stores a revocation of that user; nothing else does."""
    editors = Group.objects.create(name="editors")
    alice = User.objects.create_user("alice", password="old password", is_staff=True)
    alice.groups.add(editors)
    pk = str(alice.pk)
    alice = User.objects.get(pk=alice.pk)
    editors = Group.objects.get(pk=editors.pk)
    before = Event.objects.count()
    if change == "password":
        alice.set_password("new password")
        alice.save()
    elif change == "inactive":
        alice.is_active = False
        alice.save()
    elif change == "not staff":
        alice.is_staff = False
        alice.save(update_fields=["is_staff"])
    elif change == "made staff":
        alice.is_superuser = True
        alice.save()
    elif change == "last login":
        alice.last_login = timezone.now()
        alice.save(update_fields=["last_login"])
    elif change == "deferred password set":
        deferred = User.objects.only("username").get(pk=alice.pk)
        deferred.set_password("another")
        deferred.save()
    elif change == "renamed group":
        editors.name = "writers"
        editors.save()
    elif change == "group deleted":
        editors.delete()
    elif change == "group cleared":
        editors.user_set.clear()
    elif change == "user's groups cleared":
        alice.groups.clear()
    elif change == "added to a group":
        alice.groups.add(Group.objects.create(name="readers"))
    elif change == "user deleted":
        alice.delete()
    revocations = list(Event.objects.filter(pk__gt=before, channel="notify.revoke"))
    if revokes:
        assert [row.data for row in revocations] == [{"users": [pk]}]
    else:
        assert revocations == []


def test_a_new_password_ends_the_other_sessions_streams(servers: list[Server]):
    # Staff, for the admin's password change view.
    alice = User.objects.create_user("alice", password="old password", is_staff=True)
    here, here_cookie = logged_in(alice)
    _, elsewhere_cookie = logged_in(alice)
    here_url = stream_url(servers[0], f"user:{alice.pk}")
    elsewhere_url = stream_url(servers[1], f"user:{alice.pk}")
    with SSEClient(elsewhere_url, headers=elsewhere_cookie) as stream:
        assert stream.next().event == "notify.open"
        # Django's own view: saves the password, then keeps this session logged in
        # (update_session_auth_hash).
        form = {"old_password": "old password"}
        form |= {"new_password1": "n3w pa55word", "new_password2": "n3w pa55word"}
        response = here.post("/admin/password_change/", form)
        assert response.status_code == 302, response.content
        # A new session key, as at every login: the browser has the new cookie.
        here_cookie = {
            "Cookie": f"{settings.SESSION_COOKIE_NAME}="
            f"{here.cookies[settings.SESSION_COOKIE_NAME].value}"
        }
        event = notify.publish(f"user:{alice.pk}", "after the change")
        ended_within(stream, 1.0)
    # The other session is over; the one that changed the password goes on.
    assert_refused(
        elsewhere_url, f'not allowed to read channel "user:{alice.pk}"', elsewhere_cookie["Cookie"]
    )
    with SSEClient(here_url, headers=here_cookie, last_event_id=str(event.id - 1)) as again:
        assert again.next().event == "notify.catchup-start"
        assert again.next().id == str(event.id)


# -- the race of a revocation with streams being let in ------------------------------------


class Churn(threading.Thread):
    """A client that keeps reopening a stream with one session cookie, each stream kept a
    few milliseconds, so that at any moment some of its streams are being let in: the
    ids of every event it was sent are in ``received``."""

    def __init__(self, url: str, cookie: str, websocket: bool) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.cookie = cookie
        self.websocket = websocket
        self.received: list[int] = []
        self.opened = 0
        self.stop = threading.Event()
        self.rng = random.Random()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                if self.websocket:
                    self._websocket()
                else:
                    self._sse()
            except (OSError, httpx.HTTPError, ConnectionClosed, TimeoutError):
                pass

    def _sse(self) -> None:
        timeout = httpx.Timeout(5.0, read=self.rng.uniform(0.0, 0.04) or 0.001)
        headers = {"Cookie": self.cookie}
        with httpx.Client(timeout=timeout) as client:
            with client.stream("GET", self.url, headers=headers) as response:
                if response.status_code != 200:
                    time.sleep(0.01)
                    return
                self.opened += 1
                try:
                    for line in response.iter_lines():
                        if line.startswith("data: {") and '"channel"' in line:
                            self.received.append(json.loads(line[6:])["id"])
                except httpx.ReadTimeout:
                    pass

    def _websocket(self) -> None:
        with connect_websocket(
            self.url, additional_headers={"Cookie": self.cookie}, open_timeout=5
        ) as connection:
            deadline = time.monotonic() + self.rng.uniform(0.0, 0.04)
            while (left := deadline - time.monotonic()) > 0:
                try:
                    message = json.loads(connection.recv(timeout=left))
                except TimeoutError:
                    break
                if message.get("type") == "notify.open":
                    self.opened += 1
                elif "type" not in message:
                    self.received.append(message["id"])


@pytest.mark.parametrize("app", ["handler", "view"])
def test_a_logout_ends_the_streams_being_let_in_too(start_server: StartServer, app: str):
    """The review's reproduction: clients holding a user's session cookie keep reopening
    their user channel, the user logs out, then events are published on that channel, at
    once and 1.5 s later. No stream of that session may get any of them, in any round."""
    servers = [start_server(app=APPS[app], AUTHORIZE=DEFAULT) for _ in range(2)]
    for round in range(3):
        user = User.objects.create_user(f"alice{round}")
        client, cookie = logged_in(user)
        channel = f"user:{user.pk}"
        churn = [
            Churn(stream_url(server, channel), cookie["Cookie"], websocket=False)
            for server in servers
            for _ in range(2)
        ]
        if app == "handler":  # the WebSocket stream needs the wrapped application
            churn += [
                Churn(ws_url(server, channel), cookie["Cookie"], websocket=True)
                for server in servers
            ]
        for client_thread in churn:
            client_thread.start()
        try:
            deadline = time.monotonic() + 20
            while not all(thread.opened >= 3 for thread in churn):
                assert time.monotonic() < deadline, "the churning clients could not open"
                time.sleep(0.05)
            client.logout()
            after = [notify.publish(channel, "after the logout").id]
            time.sleep(1.5)
            after.append(notify.publish(channel, "1.5 s after the logout").id)
            time.sleep(1.0)
        finally:
            for thread in churn:
                thread.stop.set()
            for thread in churn:
                thread.join(10)
        leaked = {n: sorted(set(t.received) & set(after)) for n, t in enumerate(churn)}
        assert not any(leaked.values()), f"round {round}: events after the logout: {leaked}"
    for server in servers:
        assert "Traceback" not in server.output()


# -- what the review found ------------------------------------------------------------------


def browser_cookie(client: Client) -> dict[str, str]:
    """The ``Cookie`` header of the browser ``client`` stands for, as it is now."""
    value = client.cookies[settings.SESSION_COOKIE_NAME].value
    return {"Cookie": f"{settings.SESSION_COOKIE_NAME}={value}"}


def test_a_logout_ends_the_streams_of_that_session_only(servers: list[Server]):
    alice = User.objects.create_user("alice")
    laptop, laptop_cookie = logged_in(alice)
    _, phone_cookie = logged_in(alice)
    url = stream_url(servers[0], f"user:{alice.pk}")
    with SSEClient(url, headers=laptop_cookie) as on_laptop:
        with SSEClient(
            stream_url(servers[1], f"user:{alice.pk}"), headers=phone_cookie
        ) as on_phone:
            for stream in (on_laptop, on_phone):
                assert stream.next().event == "notify.open"
            laptop.logout()
            event = notify.publish(f"user:{alice.pk}", "after the laptop's logout")
            ended_within(on_laptop, 1.0)
            assert on_phone.next().id == str(event.id)


def test_a_login_as_another_user_ends_the_previous_users_streams(servers: list[Server]):
    """Django's login() ends the session the browser came with when another user logs in
    (it flushes it), and sends no user_logged_out for it."""
    alice = User.objects.create_user("alice")
    User.objects.create_user("bob", password="bob's password", is_staff=True)
    browser, cookie = logged_in(alice)
    url = stream_url(servers[0], f"user:{alice.pk}")
    with SSEClient(url, headers=cookie) as stream:
        assert stream.next().event == "notify.open"
        response = browser.post("/admin/login/", {"username": "bob", "password": "bob's password"})
        assert response.status_code == 302, response.content
        notify.publish(f"user:{alice.pk}", "alice's, after bob logged in")
        ended_within(stream, 1.0)
    assert_refused(url, f'not allowed to read channel "user:{alice.pk}"', cookie["Cookie"])


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "engine", ["django.contrib.sessions.backends.cache", "django.contrib.sessions.backends.db"]
)
def test_a_logout_whose_transaction_rolls_back_revokes_what_it_ended(settings, engine: str):
    """A cache session is gone for good whatever the transaction does: its revocation must
    not go with the rollback. A database session comes back with it: nothing to revoke."""
    settings.SESSION_ENGINE = engine
    browser = Client()
    browser.force_login(User.objects.create_user("alice"))
    key = browser.cookies[settings.SESSION_COOKIE_NAME].value
    digest = session_digest(key)
    with pytest.raises(RuntimeError), transaction.atomic():
        browser.logout()
        raise RuntimeError("the view failed after logging out")
    ended = engine.endswith(".cache")
    assert import_module(engine).SessionStore().exists(key) is not ended

    def stored() -> bool:
        return any(
            digest in row.data.get("sessions", ())
            for row in Event.objects.filter(channel="notify.revoke")
        )

    deadline = time.monotonic() + 5
    while ended and not stored() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stored() is ended


@pytest.mark.django_db(transaction=True)
def test_a_field_a_save_did_not_write_is_compared_by_the_save_that_writes_it():
    alice = User.objects.create_user("alice")
    alice = User.objects.get(pk=alice.pk)
    alice.is_active = False
    alice.first_name = "Alice"
    alice.save(update_fields=["first_name"])  # is_active is not written: still active
    assert not Event.objects.filter(channel="notify.revoke").exists()
    alice.save()  # now it is
    assert [row.data for row in Event.objects.filter(channel="notify.revoke")] == [
        {"users": [str(alice.pk)]}
    ]


@pytest.mark.django_db(transaction=True)
def test_a_change_in_a_transaction_holds_no_other_publisher_and_is_revoked_at_commit():
    """notify's own revocations are stored once the change commits, outside its transaction:
    inside, on PostgreSQL, the ordering lock would hold every publisher of the site until
    that transaction ends (and could deadlock with one that published and then touches the
    same user). (PostgreSQL: SQLite lets one transaction write at a time anyway.)"""
    if connections["default"].vendor != "postgresql":
        pytest.skip("SQLite has one writer at a time")
    alice = User.objects.create_user("alice")
    in_transaction, published = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def deactivate() -> None:
        try:
            with transaction.atomic():
                alice.is_active = False
                alice.save()
                in_transaction.set()
                assert published.wait(10), "a publish waited for this transaction"
                assert not Event.objects.filter(channel="notify.revoke").exists()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    worker = threading.Thread(target=deactivate)
    worker.start()
    assert in_transaction.wait(10)
    notify.publish("public:news", "not held up")
    published.set()
    worker.join(10)
    assert errors == []
    assert [row.data for row in Event.objects.filter(channel="notify.revoke")] == [
        {"users": [str(alice.pk)]}
    ]


class Idle(AsyncWebsocketConsumer):
    """A WebSocket consumer of the project's own, beside notify's stream."""

    async def connect(self) -> None:
        await self.accept()


@pytest.mark.django_db(transaction=True)
@override_settings(NOTIFY={**settings.NOTIFY, "BROKER": "notify.broker.local.LocalBroker"})
def test_only_stream_connections_hold_a_ticket():
    """Connections of the project's own consumers, routed with notify's stream as the
    README says, take no ticket: one held for a connection's life would gather every
    revocation meanwhile."""

    async def main() -> None:
        app = websocket_application([path("chat/", Idle.as_asgi()), *websocket_urlpatterns])
        chats = [WebsocketCommunicator(app, "/chat/") for _ in range(3)]
        for chat in chats:
            assert (await chat.connect())[0]
        hub = get_hub()
        try:
            assert hub.tickets == set()
            stream = WebsocketCommunicator(app, "/notify/ws/?channel=public:news")
            assert (await stream.connect())[0]
            assert json.loads(await stream.receive_from())["type"] == "notify.retry"
            assert json.loads(await stream.receive_from())["type"] == "notify.open"
            assert hub.tickets == set()  # held until the stream joined the hub
            await stream.disconnect()
        finally:
            for chat in chats:
                await chat.disconnect()
            hub.close()
            reset_hubs()
            await asyncio.sleep(0)

    async_to_sync(main)()
