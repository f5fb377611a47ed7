"""Hostile and bad input against a real daphne: each gets a clear 4xx (or the documented
``notify.reset``), never a 5xx nor a partial write, and a healthy stream open on the side
gets every event published meanwhile.

Requests that no well-behaved client library would send (control bytes or raw UTF-8 in a
header or the query) go over a plain socket as HTTP/1.0, so that the response body is the
bytes themselves, not chunked.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from django.core.exceptions import ValidationError

import notify
from notify.models import Event
from tests.conftest import Server, StartServer
from tests.policies import POLICY
from tests.sse_parser import Dispatched, SSEParser

SIDE = "public:side"
TOKEN = "hostile-input-tests-token-0123456789abcdef"


# -- a healthy stream on the side ----------------------------------------------------------


class SideStream:
    """A stream on ``SIDE``, read in a thread; ``tick()`` publishes one event to it."""

    def __init__(self, server: Server) -> None:
        self.client = httpx.Client(timeout=httpx.Timeout(10.0, read=30.0))
        self.response = self.client.send(
            self.client.build_request("GET", f"{server.url}/notify/stream/?channel={SIDE}"),
            stream=True,
        )
        assert self.response.status_code == 200
        self.raw = b""
        self.events: list[Dispatched] = []
        self.published: list[int] = []
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        self.wait_for(1)
        assert self.events[0].type == "notify.open"

    def _read(self) -> None:
        parser = SSEParser()
        try:
            for chunk in self.response.iter_raw():
                with self.changed:
                    self.raw += chunk
                    self.events += parser.feed(chunk)
                    self.changed.notify_all()
        except httpx.HTTPError:
            pass  # closed at the end of the test

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.events) >= count, timeout), (
                f"the side stream got {len(self.events)} events, not {count}: {self.events}"
            )

    def tick(self, data: Any = "tick") -> Event:
        """Publish one event and wait until the side stream has it: the server's hub has
        then reached it, and a stream opened next without a cursor starts there."""
        event = notify.publish(SIDE, data)
        self.published.append(event.id)
        self.wait_for(1 + len(self.published))
        return event

    def assert_got_everything(self) -> None:
        self.wait_for(1 + len(self.published))
        got = [int(e.last_event_id) for e in self.events[1:] if e.type == "message"]
        assert got == self.published
        assert all(json.loads(e.data)["channel"] == SIDE for e in self.events[1:])

    def close(self) -> None:
        self.response.close()
        self.client.close()


# The stream as NotifyASGIHandler serves it, and as the fallback view does.
@pytest.fixture(params=["tests.asgi:application", "tests.asgi_unwrapped:application"])
def server(request: pytest.FixtureRequest, start_server: StartServer) -> Server:
    return start_server(app=request.param, AUTHORIZE=POLICY, PUBLISH_TOKENS=[TOKEN])


@pytest.fixture
def side(server: Server) -> Iterator[SideStream]:
    stream = SideStream(server)
    yield stream
    stream.close()


def assert_healthy(server: Server, side: SideStream) -> None:
    side.tick("last")
    side.assert_got_everything()
    assert "Traceback" not in server.output()


# -- raw requests --------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def first_event(self) -> Dispatched:
        parser = SSEParser()
        events = parser.feed(self.body)
        assert events, self.body
        return events[0]


def raw_get(
    server: Server,
    target: bytes,
    headers: list[tuple[bytes, bytes]] = (),
    method: bytes = b"GET",
    body: bytes = b"",
) -> Answer:
    """``GET target`` over HTTP/1.0; for a stream, the bytes up to its first event."""
    lines = [method + b" " + target + b" HTTP/1.0", b"Host: 127.0.0.1"]
    lines += [name + b": " + value for name, value in headers]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        received = b""
        while True:
            head, _, body = received.partition(b"\r\n\r\n")
            if _ and (b"event:" in body and b"\n\n" in body.split(b"event:", 1)[1]):
                break
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    if not received:
        return Answer(0, {}, b"")  # the server hung up without an answer
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in header_lines)
    return Answer(int(status_line.split()[1]), {k.lower(): v for k, v in fields.items()}, body)


def assert_reset(answer: Answer, newest: int) -> None:
    assert answer.status == 200, answer
    event = answer.first_event()
    assert event.type == "notify.reset", event
    assert json.loads(event.data)["reason"] == "invalid-cursor"
    assert event.last_event_id == str(newest)


def assert_open(answer: Answer, newest: int) -> None:
    assert answer.status == 200, answer
    event = answer.first_event()
    assert event.type == "notify.open", event
    assert event.last_event_id == str(newest)


# -- the cursor ----------------------------------------------------------------------------

BAD_CURSORS = [
    b"-1",
    b"0x10",
    b"1e3",
    b"+5",
    b"5.0",
    b"1" * 21,
    b"9" * 10_240,
    "caf\u00e9".encode("latin-1"),
    "caf\u00e9".encode(),
    "\u0665".encode(),  # an Arabic-Indic 5: a digit to str.isdigit, not to us
    b"\x01",
    b"5\x7f",
    b"\x1b[31m",
    b"\xff\xfe",
]


def test_bad_cursors_in_the_header_get_the_reset(server, side):
    newest = side.tick().id
    for cursor in BAD_CURSORS:
        assert_reset(raw_get(server, b"/notify/stream/", [(b"Last-Event-ID", cursor)]), newest)
        newest = side.tick().id
    assert_healthy(server, side)


def test_bad_cursors_in_the_query_get_the_reset(server, side):
    newest = side.tick().id
    for cursor in [*BAD_CURSORS, b" ", b"   ", b"\x00", b"5\x00", b"\t5"]:
        target = b"/notify/stream/?lastEventId=" + quote(cursor).encode()
        assert_reset(raw_get(server, target), newest)
        newest = side.tick().id
    assert_healthy(server, side)


def test_two_cursor_headers_are_an_invalid_cursor(server, side):
    """Last-Event-ID is one value: given twice, Django joins the two with "," (and so the
    fallback view saw no valid cursor) while NotifyASGIHandler used to take the first.
    Both now read it alike, as an invalid cursor."""
    first = side.tick().id
    newest = side.tick().id
    for values in ([str(first).encode(), b"x"], [str(first).encode()] * 2, [b"", b""]):
        headers = [(b"Last-Event-ID", value) for value in values]
        assert_reset(raw_get(server, b"/notify/stream/", headers), newest)
    assert_healthy(server, side)


def test_empty_cursors_are_no_cursor(server, side):
    newest = side.tick().id
    # Header whitespace is not part of the value (RFC 9110): "   " is an empty header.
    for headers in ([(b"Last-Event-ID", b"")], [(b"Last-Event-ID", b"   ")]):
        assert_open(raw_get(server, b"/notify/stream/", headers), newest)
    assert_open(raw_get(server, b"/notify/stream/?lastEventId="), newest)
    assert_healthy(server, side)


def test_hostile_session_cookies_read_as_no_user(server, side):
    """With a channel policy the stream reads the session cookie itself: a cookie that names
    no session is an anonymous visitor, who may read public channels and not staff."""
    newest = side.tick().id
    cookies = [
        b"sessionid=",
        b"sessionid=" + b"x" * 8000,
        b"sessionid=../../etc/passwd",
        b"sessionid=\xff\xfe; sessionid=\x01",
        b'sessionid="unterminated',
        "sessionid=caf\u00e9".encode(),
        b";;;=;=;",
    ]
    for cookie in cookies:
        assert_open(raw_get(server, b"/notify/stream/", [(b"Cookie", cookie)]), newest)
        answer = raw_get(server, b"/notify/stream/?channel=staff", [(b"Cookie", cookie)])
        assert answer.status == 403, cookie
        newest = side.tick().id
    assert_healthy(server, side)


# -- channels ------------------------------------------------------------------------------

BAD_CHANNEL_QUERIES = [
    ("channel=", "channel is empty"),
    ("channel=" + "a" * 201, "is 201 characters long; the limit is 200"),
    ("channel=" + "a" * 10_000, "is 10000 characters long; the limit is 200"),
    ("channel=a%20b", "contains a space"),
    ("channel=a%3Bb", 'contains ";"'),
    ("channel=a%0Ab", "U+000A"),
    ("channel=a%0Db", "U+000D"),
    ("channel=a%00b", "U+0000"),
    ("channel=a%E2%80%A8b", "U+2028"),
    ("channel=a%ED%A0%80b", 'contains "\ufffd"'),  # an encoded surrogate is not UTF-8
    ("channel=caf%C3%A9", 'contains "\u00e9"'),
    ("channel=%F0%9F%98%80", 'contains "\U0001f600"'),
    ("channel=a%FFb", 'contains "\ufffd"'),
    ("channel=a&channel=b&channel=a", 'channel "a" is given twice'),
    ("&".join(f"channel=c{n}" for n in range(33)), "33 channels requested; the limit is 32"),
    ("&".join(f"channel=c{n}" for n in range(1000)), "1000 channels requested"),
]


def test_bad_channels_are_400_with_a_reason(server, side):
    for query, reason in BAD_CHANNEL_QUERIES:
        answer = raw_get(server, b"/notify/stream/?" + query.encode())
        assert answer.status == 400, query
        assert answer.headers["content-type"].startswith("text/plain")
        text = answer.body.decode("utf-8")
        assert reason in text, (query, text)
        assert text.endswith("\n") and "\n" not in text[:-1]
        side.tick()
    assert_healthy(server, side)


def test_a_request_line_too_long_for_the_server_is_dropped_before_notify(server, side):
    """daphne (Twisted) refuses request lines over 16 KiB: it hangs up, or answers 4xx."""
    for target in [
        b"/notify/stream/?channel=" + b"a" * 100_000,
        b"/notify/stream/?" + b"&".join(b"channel=c%d" % n for n in range(10_000)),
    ]:
        answer = raw_get(server, target)
        assert answer.status == 0 or 400 <= answer.status < 500
        side.tick()
    assert_healthy(server, side)


def test_raw_non_ascii_in_the_query_is_refused_by_the_server(start_server, server, side):
    """Browsers percent-encode; a hand-made client may not. daphne and uvicorn both refuse a
    request line that is not ASCII with a 400 of their own, before notify sees it."""
    target = "/notify/stream/?channel=caf\u00e9".encode()
    assert raw_get(server, target).status == 400
    assert raw_get(start_server(kind="uvicorn"), target).status == 400
    assert_healthy(server, side)


def test_dot_segment_channels_are_400(server, side):
    """ "../x" could stand for another name where a project builds paths or keys from
    channel names: it is refused, on the stream and when publishing."""
    for channel in ("../x", "a/../b", ".."):
        response = httpx.get(f"{server.url}/notify/stream/", params={"channel": channel})
        assert response.status_code == 400
        assert 'has a "." or ".." segment' in response.text
        with pytest.raises(ValidationError):
            notify.publish(channel, "dots")
    assert_healthy(server, side)


# -- methods ---------------------------------------------------------------------------------


def test_other_methods_are_405(server, side):
    url = f"{server.url}/notify/stream/"
    for method in ("POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "PROPFIND"):
        response = httpx.request(method, url, headers={"Origin": "https://x.example"}, timeout=10)
        assert response.status_code == 405, method
        assert response.headers["Allow"] == "GET"
        assert not any(name.startswith("access-control-") for name in response.headers)
        side.tick()
    assert_healthy(server, side)


# -- publishing --------------------------------------------------------------------------------

BAD_EVENT_TYPES = ["a\nb", "a\rb", "a\x00b", "notify.open", "notify.anything", "", "a" * 65]
BAD_DATA = ["\ud800", {"\udfff": 1}, ["a\x00b"], {"k\x00": 1}]


def publish_over_http(server: Server, body: bytes, content_type: str = "application/json"):
    return httpx.post(
        f"{server.url}/notify/publish/",
        content=body,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type},
        timeout=30,
    )


def assert_nothing_stored_but_the_side() -> None:
    assert not Event.objects.exclude(channel=SIDE).exists()


def test_bad_event_types_are_refused(server, side):
    for event in BAD_EVENT_TYPES:
        with pytest.raises(ValidationError):
            notify.publish("public:x", "data", event=event)
        body = json.dumps({"channel": "public:x", "event": event, "data": 1}).encode()
        response = publish_over_http(server, body)
        assert response.status_code == 400, event
        assert response.json()["error"].startswith("event type"), response.json()
        side.tick()
    assert_nothing_stored_but_the_side()
    assert_healthy(server, side)


def test_bad_data_is_refused(server, side):
    for data in BAD_DATA:
        with pytest.raises(ValidationError):
            notify.publish("public:x", data)
        # json.dumps escapes lone surrogates and NUL: the body is valid JSON that holds them.
        response = publish_over_http(
            server, json.dumps({"channel": "public:x", "data": data}).encode()
        )
        assert response.status_code == 400, data
        assert "NUL" in response.json()["error"] or "surrogate" in response.json()["error"]
        side.tick()
    assert_nothing_stored_but_the_side()
    assert_healthy(server, side)


def test_line_separators_in_data_are_escaped_on_the_wire(server, side):
    data = {"text": "a\u2028b\u2029c\u0085d\ne\rf", "\u2028": "key"}
    event = side.tick(data)
    response = publish_over_http(server, json.dumps({"channel": SIDE, "data": data}).encode())
    assert response.status_code == 201
    side.published.append(response.json()["id"])
    side.assert_got_everything()
    assert side.raw.isascii()
    assert b"\\u2028" in side.raw and b"\r" not in side.raw
    got = [json.loads(e.data)["data"] for e in side.events if e.type == "message"]
    assert got[-2:] == [data, data]
    assert event.data == data
    assert_healthy(server, side)


def test_ten_megabytes_are_refused(server, side):
    huge = "x" * (10 * 1024 * 1024)
    with pytest.raises(ValidationError) as info:
        notify.publish("public:x", huge)
    assert info.value.code == "too_large"
    body = json.dumps({"channel": "public:x", "data": huge}).encode()
    assert publish_over_http(server, body).status_code == 413
    # Without a Content-Length (chunked), the server reads only past the limit.
    chunked = httpx.post(
        f"{server.url}/notify/publish/",
        content=iter([body[i : i + 65536] for i in range(0, len(body), 65536)]),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert chunked.status_code == 413
    side.tick()
    assert_nothing_stored_but_the_side()
    assert_healthy(server, side)


def test_hostile_authorization_and_lengths(server, side):
    body = json.dumps({"channel": "public:x", "data": 1}).encode()
    json_type = (b"Content-Type", b"application/json")
    for authorization in [
        b"Bearer \xff" + TOKEN.encode()[1:],
        b"Bearer " + b"x" * 8000,
        b"Bearer",
        b"Bearer  ",
        b"bearer \x01",
    ]:
        answer = raw_get(
            server,
            b"/notify/publish/",
            [
                json_type,
                (b"Authorization", authorization),
                (b"Content-Length", str(len(body)).encode()),
            ],
            method=b"POST",
            body=body,
        )
        assert answer.status == 401, authorization
        side.tick()
    token = (b"Authorization", b"Bearer " + TOKEN.encode())
    # (A huge declared length is not here: daphne reads the whole body before the
    # application starts, so it waits for bytes that never come.)
    for length in [b"-1", b"abc", b"1e3", b"5, 5"]:
        answer = raw_get(
            server,
            b"/notify/publish/",
            [json_type, token, (b"Content-Length", length)],
            method=b"POST",
            body=body,
        )
        assert answer.status == 0 or 400 <= answer.status < 500, (length, answer)
        side.tick()
    assert_nothing_stored_but_the_side()
    assert_healthy(server, side)


def test_bad_bodies_are_refused(server, side):
    cases = [
        (b"not json", "application/json", 400),
        (b'{"channel": "public:x", "data": 1', "application/json", 400),
        (b"\xff\xfe{}", "application/json", 400),
        (b'["public:x"]', "application/json", 400),
        (b'{"channel": "public:x", "data": NaN}', "application/json", 400),
        (b'{"channel": "public:x"}', "text/plain", 415),
        (b'{"channel": "public:x"}', "application/x-www-form-urlencoded", 415),
        (b'{"channel": "public:x"}', "application/json; charset=latin-1", 415),
        (b'{"channel": "../x", "data": "\\u0000"}', "application/json", 400),
        (b'{"channel": "a b"}', "application/json", 400),
        (b'{"channel": 5}', "application/json", 400),
        (b'{"channel": null}', "application/json", 400),
        (b'{"channel": ["public:x"]}', "application/json", 400),
        (b'{"channel": "public:x", "event": null}', "application/json", 400),
        (b'{"channel": "public:x", "event": {"a": 1}}', "application/json", 400),
        (
            b'{"channel": "public:x", "data": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",
            "application/json",
            400,  # nested too deeply
        ),
    ]
    for body, content_type, status in cases:
        response = publish_over_http(server, body, content_type)
        assert response.status_code == status, (body, content_type, response.text)
        assert response.json()["error"]
        side.tick()
    assert_nothing_stored_but_the_side()
    assert_healthy(server, side)
