"""The stream over a WebSocket (``notify.consumers``), in a real daphne, read by a real
WebSocket client (the ``websockets`` package): the same stream as the SSE one, through the
same hub, with the same authorization, limits and shutdown; only the wire differs."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import struct
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from django.contrib.auth.models import User
from django.db import transaction
from websockets.exceptions import InvalidStatus

import notify
from notify import retention, shutdown, websocket
from notify.conf import Retention
from notify.models import Event
from tests.conftest import REDIS_PREFIX, Server, SSEClient, payload
from tests.policies import POLICY
from tests.test_asgi import (
    SERVER_ARGS,
    assert_clean_log,
    database_connections,
    publish_many,
    rss,
    stream_url,
    thread_count,
    wait_until,
)
from tests.test_cors import WILDCARD_REFUSED
from tests.test_stream_authorization import session_cookie
from tests.ws_client import WSClient, event_ids, ws_url

EXIT_SECONDS = shutdown.DRAIN_SECONDS + 1.5


def opened(client: WSClient) -> dict[str, Any]:
    """The first two messages of a stream without a cursor: the retry, then notify.open."""
    assert client.next() == {"type": "notify.retry", "retry": 3000}
    message = client.next()
    assert message["type"] == "notify.open"
    return message


def assert_refused(url: str, code: int, reason: str, retry: int = 3000, **client: Any) -> None:
    """The stream is accepted, told when to come back and why it is refused, and closed
    with ``code``."""
    with WSClient(url, **client) as ws:
        assert ws.next() == {"type": "notify.retry", "retry": retry}
        assert ws.next() == {"type": "notify.error", "code": code, "reason": reason}
        closed = ws.ended()
    assert closed.code == code


# -- the stream ----------------------------------------------------------------------------


def test_live_events_of_the_streams_channels_in_order(server):
    with WSClient(ws_url(server, "a", "b")) as ws:
        first = opened(ws)
        assert first == {"type": "notify.open", "id": first["last_id"], "last_id": first["id"]}
        events = publish_many(["a", "c", "b", "a"])
        got = [ws.next() for _ in range(3)]
    assert [message["id"] for message in got] == [events[0].id, events[2].id, events[3].id]
    assert got[1] == {
        "id": events[2].id,
        "channel": "b",
        "event": "message",
        "created": got[1]["created"],
        "data": {"n": 2},
    }
    assert "Traceback" not in server.output()


def test_an_event_is_the_same_text_on_both_transports(server):
    """The message is the SSE data line, byte for byte (both are cut from one frame)."""
    with SSEClient(stream_url(server, "a")) as sse, WSClient(ws_url(server, "a")) as ws:
        assert sse.next().event == "notify.open"
        opened(ws)
        event = notify.publish("a", {"é": "\u2028", "n": [1, 2.5, None]}, event="order.paid")
        over_sse = sse.next()
        message = ws.next()
    assert ws.raw[-1] == over_sse.data
    assert message["event"] == over_sse.event == "order.paid"
    assert message == payload(over_sse)
    assert message["id"] == event.id


def test_replay_from_the_cursor_then_live_with_no_gap_and_no_duplicate(server):
    events = publish_many(["a", "b", "a", "a", "other"])
    url = ws_url(server, "a", lastEventId=str(events[0].id))
    with WSClient(url) as ws:
        assert ws.next() == {"type": "notify.retry", "retry": 3000}
        start = ws.next()
        assert start == {"type": "notify.catchup-start", "id": events[0].id, "after": events[0].id}
        replayed = ws.until_type("notify.catchup-end")
        assert event_ids(replayed) == [events[2].id, events[3].id]
        assert replayed[-1] == {
            "type": "notify.catchup-end",
            "id": events[3].id,
            "count": 2,
            "last_id": events[3].id,
        }
        live = notify.publish("a", "live")
        assert ws.next()["id"] == live.id


def test_the_seam_under_a_publisher_that_does_not_stop(server):
    """Events published while the stream replays arrive once each, in order."""
    first = notify.publish("seam", {"n": -1})
    with WSClient(ws_url(server, "seam", lastEventId=str(first.id - 1))) as ws:
        published = [first]
        for n in range(60):
            published.append(notify.publish("seam", {"n": n}))
            time.sleep(0.002)
        got: list[int] = []
        while len(got) < len(published):
            message = ws.next()
            if "type" not in message:
                got.append(message["id"])
    assert got == [event.id for event in published]


def test_the_cursor_may_come_as_a_header(server):
    events = publish_many(["a", "a"])
    with WSClient(ws_url(server, "a"), headers={"Last-Event-ID": str(events[0].id)}) as ws:
        replayed = ws.until_type("notify.catchup-end")
    assert event_ids(replayed) == [events[1].id]


def test_reset_for_an_unknown_cursor_and_an_invalid_one(server):
    events = publish_many(["a", "a"])
    for cursor, reason in [(str(events[-1].id + 100), "unknown-cursor"), ("x", "invalid-cursor")]:
        newest = Event.objects.latest("id").id
        with WSClient(ws_url(server, "a", lastEventId=cursor)) as ws:
            ws.next()  # the retry
            assert ws.next() == {
                "type": "notify.reset",
                "id": newest,
                "reason": reason,
                "oldest_id": events[0].id,
            }
            live = notify.publish("a", "after the reset")
            assert ws.next()["id"] == live.id


def test_reset_when_retention_deleted_history_then_replay_of_what_is_left(server):
    events = publish_many(["a"] * 4)
    Event.objects.filter(id__lte=events[1].id).delete()
    with WSClient(ws_url(server, "a", lastEventId=str(events[0].id))) as ws:
        ws.next()  # the retry
        assert ws.next() == {
            "type": "notify.reset",
            "id": events[1].id,
            "reason": "history-gone",
            "oldest_id": events[2].id,
        }
        replayed = ws.until_type("notify.catchup-end")
    assert event_ids(replayed) == [events[2].id, events[3].id]


def test_what_the_client_sends_is_ignored(server):
    with WSClient(ws_url(server, "a")) as ws:
        opened(ws)
        ws.connection.send("hello?")
        ws.connection.send(b"\x00\x01")
        event = notify.publish("a", "still here")
        assert ws.next()["id"] == event.id


# -- refusals ----------------------------------------------------------------------------------


def test_a_malformed_request_is_closed_with_4400_and_its_reason(server):
    assert_refused(
        ws_url(server, "bad!"),
        4400,
        'channel "bad!" contains "!"; use only [A-Za-z0-9_.:@/-]',
    )
    assert_refused(
        ws_url(server, *[f"c{n}" for n in range(33)]),
        4400,
        '33 channels requested; the limit is 32 (NOTIFY["MAX_CHANNELS"])',
    )
    assert "Traceback" not in server.output()


@pytest.mark.parametrize(
    "app", ["tests.asgi:application", "tests.asgi:application_without_auth_middleware"]
)
def test_forbidden_channels_are_closed_with_4403_and_the_users_own_are_open(start_server, app):
    server = start_server(app=app, AUTHORIZE=POLICY)
    alice = User.objects.create_user("alice")
    url = ws_url(server, "news", "staff", f"user:{alice.pk}")
    assert_refused(url, 4403, f'not allowed to read channels "staff", "user:{alice.pk}"')
    # Alice's session, found by Channels' AuthMiddlewareStack from the cookie.
    cookie = {"Cookie": session_cookie(alice)}
    assert_refused(url, 4403, 'not allowed to read channel "staff"', headers=cookie)
    with WSClient(ws_url(server, "news", f"user:{alice.pk}"), headers=cookie) as ws:
        opened(ws)
        event = notify.publish(f"user:{alice.pk}", "for alice")
        assert ws.next()["id"] == event.id
    assert "Traceback" not in server.output()


def test_a_revoked_user_is_closed_with_4001_and_authorized_again(start_server):
    server = start_server(AUTHORIZE="notify.authorization.default_policy")
    alice = User.objects.create_user("alice")
    cookie = {"Cookie": session_cookie(alice)}
    url = ws_url(server, f"user:{alice.pk}", "broadcast")
    with WSClient(url, headers=cookie) as ws, WSClient(ws_url(server, "broadcast")) as other:
        opened(ws)
        opened(other)
        # Both subscribed once an event reached them (a revocation is not stored).
        event = notify.publish("broadcast", "subscribed")
        assert ws.next()["id"] == other.next()["id"] == event.id
        notify.revoke(alice)
        assert ws.ended(timeout=2).code == websocket.REVOKED
        event = notify.publish("broadcast", "others go on")
        assert other.next()["id"] == event.id
    alice.is_active = False
    alice.save()
    assert_refused(url, 4403, f'not allowed to read channel "user:{alice.pk}"', headers=cookie)


def test_the_limit_per_address_counts_both_transports(start_server):
    server = start_server(MAX_STREAMS_PER_IP=2)
    with SSEClient(stream_url(server, "a")) as sse, WSClient(ws_url(server, "a")) as ws:
        assert sse.next().event == "notify.open"
        opened(ws)
        reason = (
            'too many open streams for this address: the limit is 2 (NOTIFY["MAX_STREAMS_PER_IP"]);'
            " close one and retry"
        )
        assert_refused(ws_url(server, "a"), 4429, reason, retry=30_000)
        response = httpx.get(stream_url(server, "a"), timeout=10)
        assert response.status_code == 429
    # Both released when they end.
    assert wait_until(lambda: _opens(ws_url(server, "a")))


def _opens(url: str) -> bool:
    with WSClient(url) as ws:
        ws.next()
        return ws.next().get("type") == "notify.open"


def test_a_foreign_origin_is_refused_at_the_handshake(start_server):
    server = start_server(
        env={"NOTIFY_TEST_ALLOWED_HOSTS": '["127.0.0.1"]'},
        CORS_ALLOWED_ORIGINS=["https://app.example.com"],
    )
    url = ws_url(server, "a")
    with pytest.raises(InvalidStatus) as refused:
        WSClient(url, origin="https://evil.example.com")
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        WSClient(url, origin="null")
    # The site's own pages, the CORS origins, and clients that are not browsers (no Origin).
    for origin in [f"http://127.0.0.1:{server.port}", "https://app.example.com", None]:
        with WSClient(url, origin=origin) as ws:
            opened(ws)


def test_a_wildcard_cors_origin_with_credentials_lets_no_foreign_origin_in(start_server):
    # notify.E011 refuses this, but daphne runs no system check; and a handshake always
    # carries the browser's cookies.
    server = start_server(
        env={"NOTIFY_TEST_ALLOWED_HOSTS": '["127.0.0.1"]'},
        CORS_ALLOWED_ORIGINS=["*", "https://app.example.com"],
    )
    url = ws_url(server, "a")
    for origin in ["https://evil.example.com", "null"]:
        with pytest.raises(InvalidStatus) as refused:
            WSClient(url, origin=origin)
        assert refused.value.response.status_code == 403, origin
    # An error naming the settings, once: later handshakes add nothing.
    logged = server.output().count(WILDCARD_REFUSED)
    assert logged > 0
    for origin in [f"http://127.0.0.1:{server.port}", "https://app.example.com", None]:
        with WSClient(url, origin=origin) as ws:
            opened(ws)
    assert server.output().count(WILDCARD_REFUSED) == logged


@pytest.mark.parametrize(
    "app", ["tests.asgi:application", "tests.asgi:application_without_auth_middleware"]
)
def test_a_cross_origin_handshake_without_cors_credentials_is_a_visitor(start_server, app):
    # What the SSE stream gives such a page: an EventSource without credentials sends no
    # cookie. A browser sends them with every handshake, so the check takes them off.
    server = start_server(
        app=app,
        env={"NOTIFY_TEST_ALLOWED_HOSTS": '["127.0.0.1"]'},
        AUTHORIZE=POLICY,
        CORS_ALLOWED_ORIGINS=["*", "https://app.example.com"],
        CORS_ALLOW_CREDENTIALS=False,
    )
    alice = User.objects.create_user("alice")
    cookie = {"Cookie": session_cookie(alice)}
    private = ws_url(server, f"user:{alice.pk}")
    reason = f'not allowed to read channel "user:{alice.pk}"'
    for origin in ["https://app.example.com", "https://evil.example.com", "null"]:
        assert_refused(private, 4403, reason, headers=cookie, origin=origin)
        with WSClient(ws_url(server, "news"), headers=cookie, origin=origin) as ws:
            opened(ws)
    # The site's own pages, and clients that are not browsers, keep their cookies.
    for own in [f"http://127.0.0.1:{server.port}", None]:
        with WSClient(private, headers=cookie, origin=own) as ws:
            opened(ws)
    assert "Traceback" not in server.output()


# -- one hub for both transports ----------------------------------------------------------------


def test_one_broker_subscription_serves_both_transports(server, redis_url):
    channel = f"{REDIS_PREFIX}:events"
    client = redis.Redis.from_url(redis_url)
    try:
        with SSEClient(stream_url(server, "a")) as sse:
            assert sse.next().event == "notify.open"
            streams = [WSClient(ws_url(server, "a")) for _ in range(5)]
            try:
                for ws in streams:
                    opened(ws)
                assert dict(client.pubsub_numsub(channel))[channel.encode()] == 1
                event = notify.publish("a", "to all")
                assert sse.next().id == str(event.id)
                for ws in streams:
                    assert ws.next()["id"] == event.id
            finally:
                for ws in streams:
                    ws.close()
    finally:
        client.close()


def test_idle_streams_hold_no_thread_and_no_database_connection(start_server):
    server = start_server(AUTHORIZE=POLICY)
    alice = User.objects.create_user("alice")
    # Logged in: AuthMiddlewareStack reads the session and the user, the policy runs.
    cookie = {"Cookie": session_cookie(alice)}
    url = ws_url(server, f"user:{alice.pk}")
    with WSClient(url, headers=cookie) as warm:
        opened(warm)
    time.sleep(0.3)
    threads_before = thread_count(server.pid)
    connections_before = database_connections(server.pid)
    streams = []
    try:
        for _ in range(30):
            streams.append(WSClient(url, headers=cookie))
            opened(streams[-1])
        time.sleep(0.3)
        threads_open = thread_count(server.pid)
        connections_open = database_connections(server.pid)
        event = notify.publish(f"user:{alice.pk}", "to all")
        for ws in streams:
            assert ws.next()["id"] == event.id
    finally:
        for ws in streams:
            ws.close()
    assert threads_open - threads_before < 5, (threads_before, threads_open)
    assert connections_open <= connections_before, (connections_before, connections_open)


# -- ends ---------------------------------------------------------------------------------------


def test_the_lifetime_ends_with_4000_and_the_cursor_resumes(start_server):
    server = start_server(MAX_STREAM_SECONDS=1)
    with WSClient(ws_url(server, "a")) as ws:
        opened(ws)
        event = notify.publish("a", "before the end")
        assert ws.next()["id"] == event.id
        started = time.monotonic()
        assert ws.ended(timeout=3).code == websocket.ENDED
        assert time.monotonic() - started < 1.5
    missed = notify.publish("a", "between")
    with WSClient(ws_url(server, "a", lastEventId=str(event.id))) as ws:
        assert event_ids(ws.until_type("notify.catchup-end")) == [missed.id]


def test_events_deleted_before_the_hub_read_them_end_with_4000_and_the_cursor_is_told(server):
    notify.publish("a", "the hub starts at a stored id")
    with WSClient(ws_url(server, "a")) as ws:
        cursor = opened(ws)["id"]
        # A burst whose notices never came (their publisher could not reach Redis), deleted
        # by a tiny retention but for the newest before the hub read them (in the same
        # transaction: whenever the hub reads next, they are gone).
        with transaction.atomic():
            burst = [Event.objects.create(channel="a", data=n) for n in range(5)]
            list(retention.prune(Retention(None, 1), batch_size=100))
        noticed = notify.publish("a", "noticed")
        assert ws.ended().code == websocket.ENDED
    with WSClient(ws_url(server, "a", lastEventId=str(cursor))) as ws:
        ws.next()  # the retry
        oldest = burst[-1].id
        assert ws.next() == {
            "type": "notify.reset",
            "id": oldest - 1,
            "reason": "history-gone",
            "oldest_id": oldest,
        }
        assert event_ids(ws.until_type("notify.catchup-end")) == [oldest, noticed.id]


def test_sigterm_sends_a_retry_then_closes_with_4012_and_nothing_is_lost(start_server):
    server = start_server()
    backup = start_server()
    with WSClient(ws_url(server, "orders")) as ws, WSClient(ws_url(server, "orders")) as other:
        opened(ws)
        opened(other)
        event = notify.publish("orders", "before")
        assert ws.next()["id"] == other.next()["id"] == event.id
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        for client in (ws, other):
            last = client.next()
            assert last["type"] == "notify.retry"
            assert shutdown.RECONNECT_MIN_MS <= last["retry"] <= shutdown.RECONNECT_MAX_MS
            assert client.ended().code == websocket.SHUTDOWN
        assert time.monotonic() - signalled < shutdown.DRAIN_SECONDS
    server.process.wait(EXIT_SECONDS)
    assert server.process.returncode == 0
    assert "Traceback" not in server.output(), server.output()[-3000:]
    missed = notify.publish("orders", "while reconnecting")
    with WSClient(ws_url(backup, "orders", lastEventId=str(event.id))) as ws:
        assert event_ids(ws.until_type("notify.catchup-end")) == [missed.id]


# -- a client that does not read ---------------------------------------------------------------


class StalledWebSocket:
    """A WebSocket over a raw socket with a tiny receive buffer, that stops reading after
    the handshake; ``read_to_end()`` then parses what the server sent (its frames are not
    masked) up to the close frame or the end of the connection."""

    def __init__(self, server: Server, path: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", server.port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.sock.settimeout(10)
        self.received = b""
        while b"\r\n\r\n" not in self.received:
            self.received += self.sock.recv(65536)
        head, _, self.received = self.received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head

    def read_to_end(self) -> tuple[list[dict[str, Any]], int | None]:
        """The text messages, and the close code (None: no close frame came)."""
        try:
            while chunk := self.sock.recv(1 << 20):
                self.received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        self.sock.close()
        messages, code, data = [], None, self.received
        while len(data) >= 2:
            opcode, length, start = data[0] & 0x0F, data[1] & 0x7F, 2
            if length == 126:
                (length,), start = struct.unpack("!H", data[2:4]), 4
            elif length == 127:
                (length,), start = struct.unpack("!Q", data[2:10]), 10
            if len(data) < start + length:
                break  # cut short
            body, data = data[start : start + length], data[start + length :]
            if opcode == 0x1:
                messages.append(json.loads(body))
            elif opcode == 0x8:
                code = struct.unpack("!H", body[:2])[0]
                break
        return messages, code


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
def test_a_client_that_stops_reading_is_closed_as_too_slow_and_resumes(start_server, kind):
    token = "t" * 32
    server = start_server(
        kind=kind, server_args=SERVER_ARGS[kind], MAX_BUFFER=5, METRICS_TOKEN=token
    )
    stalled = StalledWebSocket(server, "/notify/ws/?channel=big")
    blob = "x" * 60_000
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    count = max((wmem_max + (2 << 20)) // len(blob) + 20, (24 << 20) // len(blob))
    published: list[Event] = []
    with WSClient(ws_url(server, "big")) as reader:
        opened(reader)
        rss_before = rss(server.pid)
        # The reader takes each event as it comes; the stalled client reads nothing.
        for n in range(count):
            published.append(notify.publish("big", {"n": n, "blob": blob}))
            assert reader.next()["id"] == published[-1].id
        rss_growth = rss(server.pid) - rss_before
        assert rss_growth < count * len(blob) / 4, (rss_growth, count * len(blob))
    messages, code = stalled.read_to_end()
    assert messages[0] == {"type": "notify.retry", "retry": 3000}
    assert messages[1]["type"] == "notify.open"
    got = event_ids(messages)
    assert got == [event.id for event in published[: len(got)]]
    assert len(got) < len(published) - 5
    # The close frame, if the client got as far as reading it: daphne (autobahn) drops the
    # connection when the close handshake times out.
    assert code in (websocket.TOO_SLOW, None)
    last = [messages[1]["id"], *got][-1]
    with WSClient(ws_url(server, "big", lastEventId=str(last))) as client:
        replayed = client.until_type("notify.catchup-end")
    assert event_ids(replayed) == [event.id for event in published[len(got) :]]
    assert server.process.poll() is None
    metrics = httpx.get(
        f"{server.url}/notify/metrics/", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    match = re.search(r"^notify_slow_client_disconnects_total (\S+)$", metrics.text, re.M)
    assert match is not None and float(match.group(1)) == 1
    # The stalled client, the reader and the replay.
    assert 'notify_streams_opened_total{transport="websocket"} 3.0' in metrics.text
    assert 'notify_streams_opened_total{transport="sse"}' not in metrics.text
    assert_clean_log(server)


def test_clients_that_close_while_events_flow_leave_no_error(server):
    """A client's close frame can arrive while the stream is sending: autobahn then refuses
    the send before the consumer hears of the close. That is the client leaving, not an
    error."""
    clients = [WSClient(ws_url(server, "burst")) for _ in range(10)]
    for ws in clients:
        opened(ws)
    with transaction.atomic():  # one burst: every notice goes out at the commit
        for n in range(300):
            notify.publish("burst", {"n": n, "pad": "x" * 1000})
    for ws in clients:
        ws.next()
        ws.close()  # a clean close: a close frame, mid-burst
    with WSClient(ws_url(server, "burst")) as ws:
        opened(ws)
        event = notify.publish("burst", "still serving")
        assert ws.next()["id"] == event.id
    time.sleep(0.5)
    assert_clean_log(server)
