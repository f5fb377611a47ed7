"""``POST /notify/publish/`` (notify.views.publish): who may publish, every answer, and an
event posted to a real server reaching an open stream."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import UTC
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.middleware.csrf import get_token
from django.test import Client, RequestFactory, override_settings
from django.urls import reverse

from notify.models import Event
from tests.conftest import SSEClient, StartServer, payload
from tests.test_asgi import stream_url

pytestmark = pytest.mark.django_db

TOKENS = ["first-token-0123456789", "second-token-0123456789"]
EVENT = {"channel": "orders", "event": "paid", "data": {"order": 7}}


def url() -> str:
    return reverse("notify:publish")


def post(
    client: Client,
    body: Any = EVENT,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Any:
    """POST ``body``: bytes as they are, anything else encoded as JSON."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    # The test client leaves the Content-Type out for an empty body: a real client does not.
    extra.setdefault("CONTENT_TYPE", content_type)
    return client.generic("POST", url(), data, headers=headers, **extra)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response: Any, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    for fragment in fragments:
        assert fragment in error, (fragment, error)


@pytest.fixture
def tokens() -> Iterator[list[str]]:
    with override_settings(NOTIFY={**settings.NOTIFY, "PUBLISH_TOKENS": TOKENS}):
        yield TOKENS


@pytest.fixture
def publisher() -> User:
    user = User.objects.create_user("publisher")
    user.user_permissions.add(Permission.objects.get_by_natural_key("add_event", "notify", "event"))
    return user


@pytest.fixture
def session_client(publisher: User) -> Client:
    """A logged-in user with the permission; CSRF checks off, as in Django's test client."""
    client = Client()
    client.force_login(publisher)
    return client


@pytest.fixture
def csrf_client(publisher: User) -> Client:
    """A logged-in user with the permission, whose client enforces CSRF checks."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(publisher)
    return client


def csrf_token(client: Client) -> str:
    """Give ``client`` a CSRF cookie, as a page rendering a form would; returns the token."""
    request = RequestFactory().get("/")
    token = get_token(request)
    client.cookies[settings.CSRF_COOKIE_NAME] = request.META["CSRF_COOKIE"]
    return token


# -- who may publish ------------------------------------------------------------------------


def test_anonymous_is_401_with_a_bearer_challenge(client, tokens):
    response = post(client)
    assert_error(response, 401, "logged-in user", "notify.add_event", "Bearer")
    assert response["WWW-Authenticate"] == "Bearer"
    assert not Event.objects.exists()


def test_session_user_without_the_permission_is_403(client):
    client.force_login(User.objects.create_user("reader"))
    response = post(client)
    assert_error(response, 403, "notify.add_event")
    assert not Event.objects.exists()


def test_session_user_with_the_permission_publishes(session_client):
    response = post(session_client)
    assert response.status_code == 201
    event = Event.objects.get()
    assert (event.channel, event.event, event.data) == ("orders", "paid", {"order": 7})


def test_superuser_publishes(client):
    client.force_login(User.objects.create_superuser("root"))
    assert post(client).status_code == 201


def test_session_request_without_a_csrf_token_is_403(csrf_client):
    response = post(csrf_client)
    assert_error(response, 403, "CSRF check failed", "CSRF cookie not set")
    csrf_token(csrf_client)
    response = post(csrf_client)
    assert_error(response, 403, "CSRF check failed", "CSRF token missing")
    response = post(csrf_client, headers={"X-CSRFToken": "x" * 32})
    assert_error(response, 403, "CSRF check failed", "incorrect")
    assert not Event.objects.exists()


def test_session_request_with_a_csrf_token_publishes(csrf_client):
    token = csrf_token(csrf_client)
    response = post(csrf_client, headers={"X-CSRFToken": token})
    assert response.status_code == 201
    assert Event.objects.get().id == response.json()["id"]


def test_csrf_is_checked_before_the_permission(client):
    """A forged request learns nothing about the user it rides on."""
    forged = Client(enforce_csrf_checks=True)
    forged.force_login(User.objects.create_user("reader"))
    assert_error(post(forged), 403, "CSRF check failed")


def test_every_publish_token_is_accepted(client, tokens):
    for token in tokens:
        response = post(client, headers=bearer(token))
        assert response.status_code == 201
    assert Event.objects.count() == 2


def test_the_bearer_scheme_is_case_insensitive(client, tokens):
    response = post(client, headers={"Authorization": f"bearer  {tokens[0]} "})
    assert response.status_code == 201


def test_token_requests_need_no_csrf_token(tokens):
    client = Client(enforce_csrf_checks=True)
    assert post(client, headers=bearer(tokens[1])).status_code == 201


@pytest.mark.parametrize(
    "token",
    [
        "wrong",
        "",
        TOKENS[0][:-1],
        TOKENS[0] + "x",
        TOKENS[0].upper(),
        f"{TOKENS[0]} {TOKENS[1]}",
        "caf\u00e9",
        "\u20ac",
    ],
)
def test_a_wrong_token_is_401(client, tokens, token):
    response = post(client, headers=bearer(token))
    assert_error(response, 401, "bearer token", 'NOTIFY["PUBLISH_TOKENS"]')
    assert response["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert not Event.objects.exists()


@pytest.mark.parametrize("token", ["", "anything", "[]"])
def test_no_token_is_accepted_when_none_is_configured(client, token):
    response = post(client, headers=bearer(token))
    assert_error(response, 401, "bearer token")
    assert not Event.objects.exists()


def test_a_request_with_a_bearer_token_is_judged_by_it_alone(csrf_client, tokens):
    """A session with the permission and a valid CSRF token does not rescue a wrong token."""
    token = csrf_token(csrf_client)
    response = post(csrf_client, headers={**bearer("wrong"), "X-CSRFToken": token})
    assert_error(response, 401, "bearer token")
    assert not Event.objects.exists()


def test_other_authorization_schemes_leave_the_session_in_charge(csrf_client, client):
    """A site behind HTTP Basic authentication: the browser sends it with every request."""
    basic = {"Authorization": "Basic dXNlcjpwYXNz"}
    token = csrf_token(csrf_client)
    assert post(csrf_client, headers={**basic, "X-CSRFToken": token}).status_code == 201
    assert_error(post(client, headers=basic), 401)


# -- what is published, and what is answered ---------------------------------------------------


def test_created_answer(client, tokens):
    response = post(client, headers=bearer(tokens[0]))
    assert response.status_code == 201
    assert response["Content-Type"] == "application/json"
    event = Event.objects.get()
    assert response.json() == {
        "id": event.id,
        "channel": "orders",
        "event": "paid",
        # As the stream's envelope writes it.
        "created": event.created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }


def test_event_and_data_are_optional(client, tokens):
    response = post(client, {"channel": "news"}, headers=bearer(tokens[0]))
    assert response.status_code == 201
    assert response.json()["event"] == "message"
    event = Event.objects.get()
    assert (event.channel, event.event, event.data) == ("news", "message", None)


def test_data_is_stored_as_its_json(client, tokens):
    body = {"channel": "a", "data": {"b": [1, 2.5, None, True], "text": "caf\u00e9 \U0001f600"}}
    assert post(client, body, headers=bearer(tokens[0])).status_code == 201
    assert Event.objects.get().data == body["data"]


def test_charset_utf8_is_accepted(client, tokens):
    for content_type in ("application/json; charset=utf-8", "application/json; charset=UTF8"):
        response = post(client, content_type=content_type, headers=bearer(tokens[0]))
        assert response.status_code == 201, content_type


# -- errors ---------------------------------------------------------------------------------

BAD_BODIES = [
    (b"", "not valid JSON"),
    (b"{", "not valid JSON"),
    (b"{'channel': 'a'}", "not valid JSON"),
    (b'{"channel": "a"} x', "not valid JSON"),
    (b'\xef\xbb\xbf{"channel": "a"}', "not valid JSON"),
    (b'{"channel": "\xff"}', "not valid UTF-8"),
    (b'{"channel": "\xed\xa0\x80"}', "not valid UTF-8"),  # an encoded surrogate
    (b"[]", "must be a JSON object"),
    (b'"orders"', "must be a JSON object"),
    (b"null", "must be a JSON object"),
    (b'{"channel": "a", "dta": 1}', 'unknown key "dta"'),
    (b'{"event": "x", "data": 1}', 'no "channel"'),
    (b'{"channel": "a b"}', 'channel "a b" contains a space'),
    (b'{"channel": ""}', "channel is empty"),
    (b'{"channel": 7}', "channel must be a string"),
    (b'{"channel": "\\ud800"}', "lone surrogate"),
    (b'{"channel": "a", "event": "notify.open"}', "reserved"),
    (b'{"channel": "a", "event": null}', "event type must be a string"),
    (b'{"channel": "a", "event": "two words"}', "contains a space"),
    (b'{"channel": "a", "data": NaN}', "NaN or Infinity"),
    (b'{"channel": "a", "data": [Infinity]}', "NaN or Infinity"),
    (b'{"channel": "a", "data": "nul \\u0000"}', "NUL"),
    (b'{"channel": "a", "data": {"\\u0000": 1}}', "NUL"),
    (b'{"channel": "a", "data": "\\udc00 alone"}', "lone surrogate"),
    (b'{"channel": "a", "data": ' + b"[" * 600 + b"]" * 600 + b"}", "nested more than 500"),
    (b'{"channel": "a", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
    (b'{"channel": "a", "data": ' + b"1" * 5000 + b"}", "more than 4300 digits"),
]


@pytest.mark.parametrize(("body", "reason"), BAD_BODIES)
def test_bad_bodies_are_400_with_a_reason(session_client, body, reason):
    response = post(session_client, body)
    assert_error(response, 400, reason)
    assert not Event.objects.exists()


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_other_methods_are_405(csrf_client, method):
    response = csrf_client.generic(method, url())
    assert_error(response, 405, "POST")
    assert response["Allow"] == "POST"


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "",
        "application/jsonx",
        "application/json; charset=latin-1",
        "application/json; charset=no-such-charset",
    ],
)
def test_other_media_types_are_415(session_client, content_type):
    response = post(session_client, content_type=content_type)
    assert_error(response, 415, "application/json" if "charset" not in content_type else "UTF-8")
    assert not Event.objects.exists()


def test_a_form_post_is_415_before_its_body_is_read(session_client):
    """Django's CSRF check would read a form body: the media type is judged before it."""
    response = session_client.post(url(), {"channel": "a", "csrfmiddlewaretoken": "x"})
    assert_error(response, 415, "multipart/form-data")
    assert not Event.objects.exists()


@pytest.fixture
def small_payloads() -> Iterator[None]:
    with override_settings(NOTIFY={**settings.NOTIFY, "MAX_PAYLOAD_BYTES": 100}):
        yield


def test_data_over_the_limit_is_413(session_client, small_payloads):
    response = post(session_client, {"channel": "a", "data": "x" * 99})
    assert_error(response, 413, "data is 101 bytes encoded; the limit is 100")
    assert not Event.objects.exists()
    assert post(session_client, {"channel": "a", "data": "x" * 98}).status_code == 201


def test_a_body_over_the_limit_is_413(session_client, small_payloads):
    body = json.dumps({"channel": "a", "data": 1}).encode() + b" " * 4200
    response = post(session_client, body)
    assert_error(response, 413, f"the body is {len(body):,} bytes; the limit is 4,196")
    assert not Event.objects.exists()


def test_the_declared_length_is_judged_before_the_credentials_and_the_body(
    session_client, small_payloads
):
    response = post(session_client, CONTENT_LENGTH="5000000000")
    assert_error(response, 413, "the body is 5,000,000,000 bytes")
    # Before the credentials, too: nobody uploads a huge body only to be told to log in.
    assert_error(post(Client(), CONTENT_LENGTH="5000"), 413)
    assert not Event.objects.exists()


# -- a real server ------------------------------------------------------------------------------


def test_an_event_posted_to_the_server_reaches_an_open_stream(start_server: StartServer):
    server = start_server(PUBLISH_TOKENS=TOKENS)
    with SSEClient(stream_url(server, "orders")) as stream:
        assert stream.next().event == "notify.open"
        response = httpx.post(
            f"{server.url}{url()}", json=EVENT, headers=bearer(TOKENS[0]), timeout=10
        )
        assert response.status_code == 201
        got = stream.next()
    created = response.json()
    assert got.id == str(created["id"])
    assert got.event == "paid"
    assert payload(got) == {**created, "data": {"order": 7}}


def test_a_chunked_body_over_the_limit_is_413_on_the_server(start_server: StartServer):
    """Without a Content-Length, the body itself is measured; never a 500."""
    server = start_server(PUBLISH_TOKENS=TOKENS, MAX_PAYLOAD_BYTES=100)

    def chunks(body: bytes) -> Iterator[bytes]:
        yield body[:10]
        yield body[10:]

    headers = {**bearer(TOKENS[0]), "Content-Type": "application/json"}
    small = json.dumps(EVENT).encode()
    with httpx.Client(timeout=10) as client:
        response = client.post(f"{server.url}{url()}", content=chunks(small), headers=headers)
        assert response.status_code == 201
        large = small + b" " * 5000
        response = client.post(f"{server.url}{url()}", content=chunks(large), headers=headers)
        assert response.status_code == 413
        assert "the body is more than 4,196 bytes" in response.json()["error"]
    assert Event.objects.count() == 1
    assert "Traceback" not in server.output()


@pytest.mark.parametrize(
    ("tokens", "refused", "accepted"),
    [
        # A string iterated as a list: each of its characters was a token.
        (TOKENS[0], ["f", TOKENS[0]], []),
        # os.environ.get() of a variable that is not set: "Bearer None" published.
        ([None, TOKENS[1]], ["None"], [TOKENS[1]]),
    ],
    ids=["a string", "None among them"],
)
def test_publish_tokens_of_the_wrong_type_are_refused_though_no_check_ran(
    start_server: StartServer, tokens, refused, accepted
):
    # notify.E009 reports these, but daphne runs no system check.
    server = start_server(PUBLISH_TOKENS=tokens)
    for token in refused + accepted:
        response = httpx.post(f"{server.url}{url()}", json=EVENT, headers=bearer(token), timeout=10)
        assert response.status_code == (201 if token in accepted else 401), token
    assert Event.objects.count() == len(accepted)
    assert 'NOTIFY["PUBLISH_TOKENS"] must be a list of non-empty strings' in server.output()


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
def test_the_server_takes_in_the_whole_body_before_the_413(start_server: StartServer, kind):
    """Why deploy/nginx.conf limits the body: the view judges the declared length first, but
    only once the server has received the whole body (daphne before the application runs,
    and Django's ASGI handler reads it all before the view under any server)."""
    server = start_server(kind=kind, PUBLISH_TOKENS=TOKENS)
    length = 10 * 2**20
    head = (
        f"POST {url()} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKENS[0]}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=1) as sock:
        sock.sendall(head.encode() + b" " * (length - 1))
        with pytest.raises(TimeoutError):
            sock.recv(4096)  # no answer while one byte is missing
        sock.settimeout(10)
        sock.sendall(b" ")
        answer = b""
        while b"bytes;" not in answer:
            chunk = sock.recv(4096)
            assert chunk, answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"the body is 10,485,760 bytes; the limit is 69,632" in answer
