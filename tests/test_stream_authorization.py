"""``NOTIFY["AUTHORIZE"]`` on the stream, served by a real daphne both by
``NotifyASGIHandler`` (which finds the user from the session cookie itself) and by the
fallback view (behind Django's middleware). The policy is tests/policies.py."""

from __future__ import annotations

import time

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.test import Client

import notify
from notify import admission
from tests.conftest import Server, SSEClient, StartServer
from tests.policies import POLICY
from tests.test_asgi import database_connections, stream_url

APPS = {
    "handler": "tests.asgi:application",
    "view": "tests.asgi_unwrapped:application",
}


@pytest.fixture(params=list(APPS))
def server(request: pytest.FixtureRequest, start_server: StartServer) -> Server:
    return start_server(app=APPS[request.param], AUTHORIZE=POLICY)


def session_cookie(user: User) -> str:
    """The ``Cookie`` header of a browser whose session ``user`` is logged in to."""
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


def assert_refused(url: str, reason: str, cookie: str | None = None) -> None:
    headers = {} if cookie is None else {"Cookie": cookie}
    # Streamed: a stream opened by mistake fails the test instead of never ending.
    with httpx.Client(timeout=10) as client, client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 403
        assert "Location" not in response.headers
        assert response.headers["Content-Type"].startswith("text/plain")
        assert response.read().decode() == reason + "\n"


def test_anonymous_is_refused_a_private_channel(server):
    url = stream_url(server, "news", "staff", "user:1")
    assert_refused(url, 'not allowed to read channels "staff", "user:1"')
    assert_refused(stream_url(server, "staff"), 'not allowed to read channel "staff"')
    assert "Traceback" not in server.output()


def test_anonymous_reads_public_channels(server):
    with SSEClient(stream_url(server, "news")) as stream:
        assert stream.next().event == "notify.open"
        event = notify.publish("news", "hello")
        assert stream.next().id == str(event.id)


def test_a_logged_in_user_reads_their_channel_only(server):
    alice = User.objects.create_user("alice")
    cookie = session_cookie(alice)
    others = f"user:{alice.pk + 1}"
    assert_refused(stream_url(server, others), f'not allowed to read channel "{others}"', cookie)
    assert_refused(stream_url(server, "staff"), 'not allowed to read channel "staff"', cookie)
    url = stream_url(server, "news", f"user:{alice.pk}")
    with SSEClient(url, headers={"Cookie": cookie}) as stream:
        assert stream.next().event == "notify.open"
        event = notify.publish(f"user:{alice.pk}", {"for": "alice"})
        assert stream.next().id == str(event.id)


def test_a_staff_user_reads_the_staff_channel(server):
    cookie = session_cookie(User.objects.create_user("boss", is_staff=True))
    with SSEClient(stream_url(server, "staff"), headers={"Cookie": cookie}) as stream:
        assert stream.next().event == "notify.open"


def test_a_stale_or_forged_session_is_anonymous(server):
    alice = User.objects.create_user("alice")
    cookie = session_cookie(alice)
    url = stream_url(server, f"user:{alice.pk}")
    reason = f'not allowed to read channel "user:{alice.pk}"'
    assert_refused(url, reason, "sessionid=not-a-session")
    # Changing the password ends the user's other sessions (Django's session hash).
    alice.set_password("changed")
    alice.save()
    assert_refused(url, reason, cookie)
    assert "Traceback" not in server.output()


def test_authorized_idle_streams_hold_no_database_connection(start_server):
    server = start_server(AUTHORIZE=POLICY)
    alice = User.objects.create_user("alice")
    cookie = {"Cookie": session_cookie(alice)}
    url = stream_url(server, f"user:{alice.pk}")
    with SSEClient(url, headers=cookie) as warm:  # the hub and the thread pool start
        warm.next()
    time.sleep(0.3)
    before = database_connections(server.pid)
    streams = [SSEClient(url, headers=cookie) for _ in range(10)]
    try:
        for stream in streams:
            assert stream.next().event == "notify.open"
        time.sleep(0.3)
        assert database_connections(server.pid) <= before
    finally:
        for stream in streams:
            stream.close()


# -- finding the user, in process -----------------------------------------------------------


@pytest.mark.django_db
def test_session_user():
    alice = User.objects.create_user("alice")
    cookie = f"csrftoken=x; {session_cookie(alice)}; theme=dark"
    assert admission.session_user(cookie) == alice
    assert isinstance(admission.session_user(""), AnonymousUser)
    assert isinstance(admission.session_user("sessionid=nothing-of-the-kind"), AnonymousUser)
    assert isinstance(admission.session_user("sessionid"), AnonymousUser)


def test_the_open_policy_looks_nobody_up(monkeypatch):
    """Without AUTHORIZE, opening a stream reads no session and no user (no database)."""

    def fail(cookie_header: str) -> None:
        raise AssertionError("the user was looked up")

    monkeypatch.setattr(admission, "session_user", fail)
    scope = {"headers": [(b"cookie", b"sessionid=abc")]}
    assert async_to_sync(admission.check_access)(scope, ["staff"]).refused == []
