"""notify.shutdown: on SIGTERM a server ends its streams with a last ``retry:`` within
DRAIN_SECONDS, answers new streams with a ``retry:`` alone while it drains, and exits; the
clients resume on another server and miss nothing.

Real daphne and uvicorn processes get a real SIGTERM; both the wrapped application
(tests/asgi.py) and Django's plain handler with the fallback view (tests/asgi_unwrapped.py).
The handler chaining is also tested in this process, with a real signal.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import pytest
from django.test import AsyncClient

import notify
from notify import shutdown
from notify.asgi import serve_stream
from notify.hub import Hub, get_hub
from notify.models import Event
from tests.conftest import Server, manage
from tests.sse_parser import SSEParser
from tests.test_asgi import (
    SERVER_ARGS,
    RawStream,
    StalledClient,
    assert_clean_log,
    stream_url,
)

WRAPPED = "tests.asgi:application"
UNWRAPPED = "tests.asgi_unwrapped:application"
# How long a server may take from SIGTERM to its exit: the drain, then the server's own stop.
EXIT_SECONDS = shutdown.DRAIN_SECONDS + 1.5


def retry_value(block: bytes) -> int:
    """N of a block that is ``retry: N`` alone, in the range a shutdown picks from."""
    assert block.startswith(b"retry: ") and block.endswith(b"\n\n"), block
    value = int(block.removeprefix(b"retry: ").removesuffix(b"\n\n"))
    assert shutdown.RECONNECT_MIN_MS <= value <= shutdown.RECONNECT_MAX_MS, value
    return value


def assert_reconnect_answer(body: bytes, cursor: str) -> None:
    """``body`` is the answer to a stream opened while the server drains: its first frame
    alone. A client that parses it by the WHATWG rules, from an empty ID buffer, dispatches
    nothing, takes the short delay, and keeps its cursor for the reconnection."""
    parser = SSEParser()
    assert parser.feed(body) == []
    assert parser.retry is not None
    assert shutdown.RECONNECT_MIN_MS <= parser.retry <= shutdown.RECONNECT_MAX_MS
    assert parser.last_event_id == cursor
    assert body == f"retry: {parser.retry}\nid: {cursor}\n\n".encode()


def read_to_end(stream: RawStream, within: float = EXIT_SECONDS) -> float:
    """Read until the response ends (a cut response makes httpx raise); when it ended.
    Fails when it still goes on (heartbeats, say) ``within`` seconds from now."""
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            stream.read_chunk()
    except EOFError:
        return time.monotonic()
    raise AssertionError(f"the stream goes on after {within} s")


def wait_for_exit(server: Server, since: float) -> float:
    """Seconds from ``since`` to the server's exit; fails beyond EXIT_SECONDS."""
    try:
        server.process.wait(timeout=max(0.0, since + EXIT_SECONDS - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running:\n{server.output()[-5000:]}") from None
    return time.monotonic() - since


def assert_refused(server: Server) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


def channel_ids(channel: str, after: int) -> list[int]:
    events = Event.objects.filter(channel=channel, id__gt=after).order_by("id")
    return list(events.values_list("id", flat=True))


class Reader:
    """A stream read as a browser's EventSource reads it (through the WHATWG parser),
    keeping the raw bytes too."""

    def __init__(self, url: str, last_event_id: str | None = None) -> None:
        headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
        self.stream = RawStream(url, headers, read_timeout=EXIT_SECONDS + 5)
        self.parser = SSEParser()
        #: The id the stream starts after: its cursor, else the id of its ``notify.open``.
        self.start = last_event_id
        self.message_ids: list[int] = []
        self._read = 0

    def _feed(self) -> None:
        new = self.stream.received[self._read :]
        self._read = len(self.stream.received)
        for event in self.parser.feed(new):
            if event.type == "message":
                self.message_ids.append(int(event.last_event_id))
            elif event.type == "notify.open" and self.start is None:
                self.start = event.last_event_id

    def until(self, event_type: str) -> None:
        self.stream.until(event_type)
        self._feed()

    def next_block(self) -> bytes:
        raw = self.stream.next_block().raw
        self._feed()
        return raw

    def to_end(self) -> float:
        ended = read_to_end(self.stream)
        self._feed()
        self.stream.close()
        return ended


@pytest.mark.parametrize(
    ("kind", "app"),
    [("daphne", WRAPPED), ("uvicorn", WRAPPED), ("daphne", UNWRAPPED), ("uvicorn", UNWRAPPED)],
    ids=["daphne", "uvicorn", "daphne-view", "uvicorn-view"],
)
def test_sigterm_ends_streams_with_a_retry_then_the_server_exits(start_server, kind, app):
    server = start_server(kind=kind, app=app, HEARTBEAT_SECONDS=1)
    backup = start_server(kind=kind, app=app)
    url = stream_url(server, "orders")
    earlier = [notify.publish("orders", {"n": n}) for n in range(3)]
    readers = [Reader(url), Reader(url), Reader(url, last_event_id=str(earlier[0].id))]
    for reader in readers[:2]:
        reader.until("notify.open")
    readers[2].until("notify.catchup-end")
    # One stream idle between two heartbeats: it is in the middle of waiting when the
    # signal comes.
    idle = Reader(stream_url(server, "quiet"))
    idle.until("notify.open")
    assert idle.next_block() == b": heartbeat\n\n"
    live = [notify.publish("orders", {"live": n}) for n in range(3)]
    for reader in readers:
        while live[-1].id not in reader.message_ids:
            reader.until("message")

    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    # Published while the streams end: delivered before the end or replayed later.
    notify.publish("orders", {"during": "drain"})
    for reader in [*readers, idle]:
        ended = reader.to_end()
        assert ended - signalled < shutdown.DRAIN_SECONDS
        # The last bytes: a retry: alone, which EventSource takes as its reconnection delay.
        last_block = reader.stream.received.rsplit(b"\n\n", 2)[-2] + b"\n\n"
        assert reader.parser.retry == retry_value(last_block)
    wait_for_exit(server, signalled)
    assert_refused(server)
    # uvicorn re-raises the signal it caught once it has stopped, with the default handler.
    expected = {"daphne": 0, "uvicorn": -signal.SIGTERM}[kind]
    assert server.process.returncode == expected, server.output()[-3000:]
    assert "Traceback" not in server.output(), server.output()[-5000:]

    # Published while no server listens; the clients resume on the other server.
    notify.publish("orders", {"after": "exit"})
    notify.publish("quiet", {"after": "exit"})
    for reader, channel in [*((reader, "orders") for reader in readers), (idle, "quiet")]:
        last_id = reader.parser.last_event_id
        resumed = Reader(stream_url(backup, channel), last_event_id=last_id)
        resumed.until("notify.catchup-end")
        resumed.stream.close()
        # Every event after where the client started, once, in order.
        assert reader.message_ids + resumed.message_ids == channel_ids(channel, int(reader.start))
    assert "Traceback" not in backup.output()


def stall(server: Server) -> StalledClient:
    """A stream whose client stopped reading, with every buffer on the way to it full: under
    uvicorn ``send()`` then waits; under daphne the stream is paused (notify.backpressure)."""
    stalled = StalledClient(server, "/notify/stream/?channel=big")
    blob = "x" * 60_000
    # Enough for the kernel's buffers and daphne's 64 KiB, and far fewer than MAX_BUFFER:
    # the stream is not closed as too slow.
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    for n in range((wmem_max + (2 << 20)) // len(blob) + 20):
        notify.publish("big", {"n": n, "blob": blob})
    time.sleep(0.5)
    return stalled


@pytest.mark.parametrize("app", [WRAPPED, UNWRAPPED], ids=["asgi", "view"])
def test_while_draining_new_streams_get_a_retry_alone(start_server, app):
    """uvicorn blocked in a write to a client that does not read: the drain lasts, and a
    stream opened meanwhile is answered 200 with a ``retry:`` alone (any other status would
    make EventSource give up for good)."""
    server = start_server(kind="uvicorn", app=app)
    cursor = str(notify.publish("orders", {"n": 1}).id)
    stalled = stall(server)
    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    time.sleep(0.5)
    with RawStream(stream_url(server, "orders"), {"Last-Event-ID": cursor}) as fresh:
        assert fresh.response.status_code == 200
        assert fresh.response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert fresh.response.headers["Cache-Control"] == "no-store"
        read_to_end(fresh)
    assert_reconnect_answer(fresh.received, cursor)
    # Other requests are served as usual meanwhile.
    history = httpx.get(f"{server.url}/notify/history/?channel=big&limit=1", timeout=5)
    assert history.status_code == 200
    assert time.monotonic() - signalled < shutdown.DRAIN_SECONDS
    assert server.process.poll() is None  # still draining: the stalled stream holds it
    stalled.sock.close()
    wait_for_exit(server, signalled)
    assert_refused(server)
    assert_clean_log(server)


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
def test_a_client_that_stopped_reading_does_not_hold_the_exit(start_server, kind):
    server = start_server(kind=kind, server_args=SERVER_ARGS[kind])
    stalled = stall(server)
    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    elapsed = wait_for_exit(server, signalled)
    cancelled = "cancelling them" in server.output()
    if kind == "uvicorn":
        # Its write waited until the drain's end; then it was cancelled and the connection
        # dropped (uvicorn would wait for its buffer to reach the client before exiting).
        assert elapsed >= shutdown.DRAIN_SECONDS
        assert cancelled
    else:
        # Paused, so not blocked: it ended at once, its last frame left in daphne's buffer.
        assert not cancelled
    # Its connection is closed: it gets what the kernel had for it, then the end.
    stalled.read_to_end()
    assert_refused(server)
    assert_clean_log(server)


# -- in this process ---------------------------------------------------------------------


@pytest.fixture
def sigterm_restored() -> Iterator[None]:
    original = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, original)


def run_in_loop(main: Any) -> Any:
    """Run ``main(hub)`` in a fresh event loop with its hub, then stop the hub."""

    async def run() -> Any:
        hub = get_hub()
        try:
            return await main(hub)
        finally:
            hub.close()

    return asyncio.run(run())


async def open_until_closed(hub: Hub) -> str | None:
    """A stream's subscription, kept until the hub closes it; why it was closed."""
    subscriber = await hub.subscribe(["orders"])
    try:
        while not subscriber.closed:
            await subscriber.wait()
            subscriber.take()
            subscriber.heartbeat_due = False
        return subscriber.closed
    finally:
        hub.unsubscribe(subscriber)


@pytest.mark.django_db(transaction=True)
def test_the_handler_drains_then_calls_the_one_it_replaced(sigterm_restored):
    calls: list[tuple[int, bool]] = []
    hubs: list[Hub] = []
    called: list[asyncio.Event] = []

    def previous(signum: int, frame: FrameType | None) -> None:
        # Called once the streams are gone.
        calls.append((signum, not hubs[-1].subscribers))
        called[-1].set()

    signal.signal(signal.SIGTERM, previous)

    async def main(hub: Hub) -> str | None:
        hubs.append(hub)
        called.append(asyncio.Event())
        shutdown.watch()
        shutdown.watch()  # idempotent
        stream = asyncio.create_task(open_until_closed(hub))
        await asyncio.sleep(0.1)
        signal.raise_signal(signal.SIGTERM)
        reason = await asyncio.wait_for(stream, shutdown.DRAIN_SECONDS)
        await asyncio.wait_for(called[-1].wait(), 1)
        assert hub.draining
        return reason

    assert run_in_loop(main) == "shutdown"
    assert calls == [(signal.SIGTERM, True)]
    # The loop is closed: a SIGTERM goes straight to the handler that was there before.
    signal.raise_signal(signal.SIGTERM)
    assert calls == [(signal.SIGTERM, True)] * 2
    # Installed again for a new loop, still in front of the same handler (not of itself).
    assert run_in_loop(main) == "shutdown"
    assert calls == [(signal.SIGTERM, True)] * 3


@pytest.mark.django_db(transaction=True)
def test_sigterm_is_left_alone_when_ignored(sigterm_restored):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    async def main(hub: Hub) -> None:
        shutdown.watch()

    run_in_loop(main)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN


# Under no server: Python's default for SIGTERM, which kills the process.
DEFAULT_HANDLER_SCRIPT = """
import asyncio, signal
from notify import shutdown
from notify.hub import get_hub

async def main():
    hub = get_hub()
    shutdown.watch()
    subscriber = await hub.subscribe(["orders"])
    signal.raise_signal(signal.SIGTERM)
    while not subscriber.closed:
        await subscriber.wait()
    print("closed:", subscriber.closed, flush=True)
    hub.unsubscribe(subscriber)
    await asyncio.sleep(10)
    print("still running", flush=True)

asyncio.run(main())
"""


@pytest.mark.django_db(transaction=True)
def test_with_the_default_handler_the_process_dies_of_the_signal_after_draining():
    started = time.monotonic()
    result = manage("shell", "-c", DEFAULT_HANDLER_SCRIPT)
    assert result.returncode == -signal.SIGTERM, result.stderr
    # The drain ended the stream, then the signal killed the process (no "still running").
    assert result.stdout.endswith("closed: shutdown\n"), result.stdout
    assert time.monotonic() - started < 10


class ASGIResponse:
    """What ``serve_stream`` sends, in this process."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = b""
        self.complete = False

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        else:
            self.body += message.get("body", b"")
            self.complete = not message.get("more_body", False)


ORIGIN = "https://app.example.com"


@pytest.fixture
def cors_origin(settings: Any) -> str:
    settings.NOTIFY = {**settings.NOTIFY, "CORS_ALLOWED_ORIGINS": [ORIGIN]}
    return ORIGIN


@pytest.mark.django_db(transaction=True)
def test_draining_answer_of_the_asgi_handler(cors_origin):
    async def main(hub: Hub) -> ASGIResponse:
        hub.draining = True
        response = ASGIResponse()
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/notify/stream/",
            "query_string": b"channel=orders",
            "headers": [(b"origin", ORIGIN.encode()), (b"last-event-id", b"42")],
            "client": ("127.0.0.1", 5000),
        }

        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()  # the client stays
            raise AssertionError

        await asyncio.wait_for(serve_stream(scope, receive, response.send), 5)
        return response

    response = run_in_loop(main)
    assert response.status == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    # A cross-origin EventSource needs these on this answer too, or it gives up.
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.complete
    assert_reconnect_answer(response.body, "42")


@pytest.mark.django_db(transaction=True)
def test_draining_answer_of_the_view(cors_origin):
    async def main(hub: Hub) -> Any:
        hub.draining = True
        return await AsyncClient().get(
            "/notify/stream/",
            {"channel": "orders"},
            headers={"Origin": ORIGIN, "Last-Event-ID": "42"},
        )

    response = run_in_loop(main)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response["Access-Control-Allow-Origin"] == ORIGIN
    assert_reconnect_answer(response.content, "42")


def test_reconnect_delays_are_spread():
    delays = [shutdown.reconnect_delay() for _ in range(200)]
    assert all(shutdown.RECONNECT_MIN_MS <= delay <= shutdown.RECONNECT_MAX_MS for delay in delays)
    assert len(set(delays)) > 100


def test_signal_is_not_watched_outside_the_main_thread(sigterm_restored):
    before = signal.getsignal(signal.SIGTERM)

    outcome: list[BaseException | None] = []

    async def main() -> None:
        shutdown.watch()

    def in_thread() -> None:
        # signal.signal() would raise ValueError here.
        try:
            asyncio.run(main())
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert outcome == [None]
    assert signal.getsignal(signal.SIGTERM) is before
