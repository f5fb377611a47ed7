"""The load generator: many concurrent SSE or WebSocket clients on raw asyncio sockets, in
one process.

    taskset -c 1 .venv/bin/python -m bench.loadgen http://127.0.0.1:8000/notify/stream/ \\
        --clients 1000 --events 100 --duration 30
    taskset -c 1 .venv/bin/python -m bench.loadgen ws://127.0.0.1:8000/notify/ws/ ...

Opens ``--clients`` connections (in waves of ``--wave``, or ``--all-at-once``).

- ``http://``: each an HTTP/1.1 GET read as plain or chunked. A connection counts as open at
  its status ``200`` and first body bytes.
- ``ws://``: each a WebSocket upgrade (RFC 6455): a ``Sec-WebSocket-Key`` of its own, then
  status ``101`` and the matching ``Sec-WebSocket-Accept`` are required, and the server's
  frames are read (7, 16 and 64-bit lengths; fragmented messages are joined). A
  connection counts as open at its first text message other than ``notify.retry`` (which
  every connection gets first, a refused one too) and ``notify.error``: at its
  ``notify.open``, sent once the stream is subscribed. A connection closed before that
  is failed by its close code (``close-<code>``: a refusal says why in its
  ``notify.error`` just before). Pings are
  answered with a pong (masked, as everything a client sends must be): daphne pings
  every 20 s and closes a connection whose pong has not come 30 s later. A close frame is
  echoed; the stream then counts as closed early.

A connection's connect time runs from its ``connect()`` to its opening. Once all are open
(or failed) it prints ``ready``. From then on every event that holds ``"t": <float>`` (the
``time.time()`` of its publish) is counted for its connection, and ``now - t`` goes into a
histogram of 0.1 ms bins, so that 10k clients cost no more memory than 100 and p50/p99
stay exact to 0.1 ms. An event is an SSE event's data line, or a WebSocket text message
(notify's is that same data line: the envelope, the payload in its ``data``), so both
transports are timed alike. A second histogram, the spread, holds each arrival's delay
after the same event's first arrival on any stream: the server's fan-out alone, without
the publisher's database write and Redis hop before it.

The measurement ends when every open connection has ``--events`` events, ``--duration``
seconds after ``ready``, on ``stop`` read from stdin (with ``--control``), or on SIGTERM or
SIGINT; it then prints one JSON line of results. With ``--control`` it keeps the
connections open until stdin ends, so that a scenario can read the server's state (CPU,
memory) before the clients leave.

Cheap per event on purpose, so that the client is never what is measured: each SSE read is
de-chunked with ``bytes.find`` and scanned with one regular expression; nothing parses SSE.
A WebSocket read is cut into frames by their headers and each text message searched once
with the same expression: nothing decodes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import queue
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from array import array
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

# The publish time inside an event's data line, whatever the target's envelope.
T_FIELD = re.compile(rb'"t":\s*([0-9.eE+-]+)')
# End of one SSE event. Every target ends lines with \n only.
EVENT_END = b"\n\n"
BIN_SECONDS = 0.0001  # histogram resolution: 0.1 ms
MAX_BINS = 600_000  # up to 60 s; slower events land in the last bin (the max stays exact)
MAX_HEAD = 16384  # a response head longer than this is not from an SSE server

# RFC 6455: the key's digest with this GUID is the server's Sec-WebSocket-Accept (4.2.2);
# the opcodes (5.2).
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
# The messages notify sends before a stream opens, and before it refuses one
# (notify.websocket): neither opens the connection.
NOT_OPEN = (b'"type": "notify.retry"', b'"type": "notify.error"')


class Histogram:
    """Latencies in fixed 0.1 ms bins; exact count, mean and max."""

    def __init__(self) -> None:
        self.bins = array("I", bytes(4 * MAX_BINS))
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.bins[min(int(seconds / BIN_SECONDS), MAX_BINS - 1)] += 1
        self.count += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds

    def percentile(self, p: float) -> float:
        """The upper edge of the bin holding the ``p``-th percentile, in seconds (0 when
        empty)."""
        if not self.count:
            return 0.0
        rank = max(1, round(p / 100 * self.count))
        seen = 0
        for index, count in enumerate(self.bins):
            seen += count
            if seen >= rank:
                return min((index + 1) * BIN_SECONDS, self.max)
        return self.max

    def summary_ms(self) -> dict[str, float | int] | None:
        """Count, p50, p99, max and mean in milliseconds; None when empty."""
        if not self.count:
            return None
        return {
            "count": self.count,
            "p50": _ms(self.percentile(50)),
            "p99": _ms(self.percentile(99)),
            "max": _ms(self.max),
            "mean": _ms(self.total / self.count),
        }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


class Run:
    """What all connections share: the request, the histogram, the end condition."""

    def __init__(self, url: str, expected: int | None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "ws") or parts.hostname is None:
            raise SystemExit(f"{url}: only http:// and ws://host:port/path URLs are supported")
        self.host = parts.hostname
        self.port = parts.port or 80
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        head = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        self.protocol: type[Stream]
        if parts.scheme == "ws":
            self.protocol = WebSocketStream
            # Each connection ends it with its own key and the blank line.
            head += "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            self.request = (head + "Sec-WebSocket-Key: ").encode("latin-1")
        else:
            self.protocol = Stream
            head += "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
            self.request = head.encode("latin-1")
        self.transport = "websocket" if parts.scheme == "ws" else "sse"
        self.expected = expected
        self.latency = Histogram()
        # Time from an event's first arrival, on any stream, to its arrival on each: the
        # server's fan-out alone, without the publisher's path (database, Redis) before it.
        self.spread = Histogram()
        self.first_arrival: dict[bytes, float] = {}  # by the bytes of the event's "t"
        self.streams: list[Stream] = []
        self.connect_seconds: list[float] = []
        self.failures: Counter[str] = Counter()
        self.closed_early = 0
        self.pings = 0  # WebSocket pings answered
        self.complete = 0  # streams that received ``expected`` events
        self.finished = asyncio.Event()
        self.ready = False  # every connection is open or failed
        self.closing = False

    def check_finished(self) -> None:
        if (
            self.ready
            and self.expected is not None
            and self.complete + self.closed_early >= len(self.streams)
        ):
            self.finished.set()


class Stream(asyncio.Protocol):
    """One SSE connection: its response head, de-chunking, and the events it counts."""

    __slots__ = (
        "chunk_left",
        "chunked",
        "events",
        "head",
        "live",
        "opened",
        "pending",
        "raw",
        "reading_head",
        "run",
        "transport",
    )

    def __init__(self, run: Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.head = b""
        self.reading_head = True
        self.chunked = False
        self.raw = b""  # chunked bytes not yet de-chunked (a partial size line)
        self.chunk_left = 0  # bytes of the current chunk still to come
        self.pending = b""  # the start of an event whose end has not arrived yet
        self.events = 0
        self.live = False  # opened, and counted in run.streams

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.run.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if self.reading_head:
            data = self._read_head(data)
            if not data:
                return
        if self.chunked:
            data = self._dechunk(data)
            if not data:
                return
        if not self.opened.done():
            self.opened.set_result(None)
        self._count_events(data, now)

    def _read_head(self, data: bytes) -> bytes:
        """The body bytes after the response head (b"" until the head is complete)."""
        head = self.head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            self.head = head
            if len(head) > MAX_HEAD:
                self._fail("head-too-long")
            return b""
        status_line, _, headers = head[:end].partition(b"\r\n")
        status = status_line.split(b" ", 2)[1] if status_line.count(b" ") else b"?"
        problem = self._check_head(status, headers)
        if problem is not None:
            self._fail(problem)
            return b""
        self.head = b""
        self.reading_head = False
        return head[end + 4 :]

    def _check_head(self, status: bytes, headers: bytes) -> str | None:
        """Why the response's status and headers are not a stream's; None if they are."""
        if status != b"200":
            return f"status-{status.decode('latin-1')}"
        self.chunked = b"transfer-encoding: chunked" in headers.lower()
        return None

    def _dechunk(self, data: bytes) -> bytes:
        raw = self.raw + data if self.raw else data
        size = len(raw)
        parts = []
        position = 0
        while position < size:
            if self.chunk_left:
                taken = min(self.chunk_left, size - position)
                parts.append(raw[position : position + taken])
                position += taken
                self.chunk_left -= taken
                continue
            line_end = raw.find(b"\r\n", position)
            if line_end < 0:
                break
            line = raw[position:line_end]
            position = line_end + 2
            if not line:  # the CRLF that ends a chunk's data
                continue
            self.chunk_left = int(line.split(b";", 1)[0], 16)
            if not self.chunk_left:  # the last chunk: the server ended the response
                break
        self.raw = raw[position:]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _count_events(self, data: bytes, now: float) -> None:
        if self.pending:
            data = self.pending + data
        end = data.rfind(EVENT_END)
        if end < 0:
            self.pending = data
            return
        self.pending = data[end + 2 :]
        run = self.run
        before = self.events
        first_arrival = run.first_arrival
        for match in T_FIELD.finditer(data, 0, end):
            stamp = match.group(1)
            run.latency.add(now - float(stamp))
            run.spread.add(now - first_arrival.setdefault(stamp, now))
            self.events += 1
        if run.expected is not None and before < run.expected <= self.events:
            run.complete += 1
            run.check_finished()

    def _fail(self, reason: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed before the first bytes"))
        elif self.live and not self.run.closing:
            self.run.closed_early += 1
            self.run.check_finished()


class WebSocketStream(Stream):
    """One WebSocket connection: the upgrade, the server's frames, and the events it counts.

    The server's frames are unmasked; the few this client sends (pongs, the close echo) are
    masked, as RFC 6455 requires of a client."""

    __slots__ = ("fragments", "frames", "key")

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        self.key = base64.b64encode(os.urandom(16))
        self.frames = b""  # the start of a frame whose end has not arrived yet
        self.fragments: list[bytes] | None = None  # a fragmented text message so far

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.run.request + self.key + b"\r\n\r\n")

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if self.reading_head:
            data = self._read_head(data)
            if not data:
                return
        self._read_frames(data, now)

    def _check_head(self, status: bytes, headers: bytes) -> str | None:
        if status != b"101":
            return f"status-{status.decode('latin-1')}"
        expected = base64.b64encode(hashlib.sha1(self.key + WEBSOCKET_GUID).digest())
        for line in headers.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-accept":
                return None if value.strip() == expected else "bad-accept"
        return "no-accept"

    def _read_frames(self, data: bytes, now: float) -> None:
        buffer = self.frames + data if self.frames else data
        size = len(buffer)
        position = 0
        while size - position >= 2:
            first, second = buffer[position], buffer[position + 1]
            if second & 0x80:
                self._fail("masked-frame")  # a server must not mask (RFC 6455, 5.1)
                return
            length = second & 0x7F
            start = position + 2
            if length == 126:
                start += 2
            elif length == 127:
                start += 8
            if start > size:
                break
            if length >= 126:
                length = int.from_bytes(buffer[position + 2 : start], "big")
            end = start + length
            if end > size:
                break
            if not self._frame(first, buffer[start:end], now):
                return
            position = end
        self.frames = buffer[position:]

    def _frame(self, first: int, payload: bytes, now: float) -> bool:
        """Take one frame; False when the connection failed (read nothing more)."""
        final = first & 0x80
        opcode = first & 0x0F
        if opcode == TEXT and final:
            self._message(payload, now)
        elif opcode == TEXT:
            self.fragments = [payload]
        elif opcode == CONTINUATION and self.fragments is not None:
            self.fragments.append(payload)
            if final:
                message = b"".join(self.fragments)
                self.fragments = None
                self._message(message, now)
        elif opcode == PING:
            self.run.pings += 1
            self._send(PONG, payload)
        elif opcode == CLOSE:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            self._send(CLOSE, payload[:2])  # the echo; the server then closes the TCP side
            if not self.opened.done():
                self._fail(f"close-{code}")
                return False
        elif opcode != PONG:
            self._fail(f"opcode-{opcode}")  # notify sends text only
            return False
        return True

    def _message(self, text: bytes, now: float) -> None:
        if not self.opened.done():
            if any(kind in text for kind in NOT_OPEN):
                return
            self.opened.set_result(None)
        match = T_FIELD.search(text)
        if match is None:  # a control message: notify.retry, notify.open, ...
            return
        stamp = match.group(1)
        run = self.run
        run.latency.add(now - float(stamp))
        run.spread.add(now - run.first_arrival.setdefault(stamp, now))
        self.events += 1
        if self.events == run.expected:
            run.complete += 1
            run.check_finished()

    def _send(self, opcode: int, payload: bytes) -> None:
        """A control frame (payload at most 125 bytes), masked."""
        if self.transport is None or self.transport.is_closing():
            return
        mask = os.urandom(4)
        length = len(payload)
        keystream = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
        masked = (int.from_bytes(payload, "big") ^ keystream).to_bytes(length, "big")
        self.transport.write(bytes((0x80 | opcode, 0x80 | length)) + mask + masked)


async def open_stream(run: Run, connect_timeout: float) -> None:
    loop = asyncio.get_running_loop()
    stream = run.protocol(run)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(connect_timeout):
            await loop.create_connection(lambda: stream, run.host, run.port)
            await stream.opened
    except (OSError, TimeoutError) as exc:
        # Refused and reset connections by their kind; a bad answer (_fail) by its reason.
        if isinstance(exc, TimeoutError):
            reason = "timeout"
        else:
            reason = str(exc) if type(exc) is ConnectionError else type(exc).__name__
        run.failures[reason] += 1
        if stream.transport is not None:
            stream.transport.abort()
        return
    run.connect_seconds.append(time.perf_counter() - started)
    stream.live = True
    run.streams.append(stream)


async def open_all(run: Run, clients: int, wave: int | None, connect_timeout: float) -> float:
    """Open the connections, ``wave`` at a time (None: all at once); the seconds it took.
    After a wave of which no connection opened, the rest are not tried (``not-tried``):
    a server that stopped answering would otherwise cost a timeout per wave."""
    started = time.perf_counter()
    step = wave or clients
    for first in range(0, clients, step):
        count = min(step, clients - first)
        opened = len(run.streams)
        await asyncio.gather(*(open_stream(run, connect_timeout) for _ in range(count)))
        if len(run.streams) == opened and first + count < clients:
            run.failures["not-tried"] += clients - first - count
            break
    return time.perf_counter() - started


async def read_control(stop: asyncio.Event, eof: asyncio.Event) -> None:
    """Lines on stdin: ``stop`` ends the measurement; end of input ends the process."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == b"stop":
            stop.set()
    stop.set()
    eof.set()


def summary(run: Run, clients: int, open_seconds: float, measured: float) -> dict[str, Any]:
    counts = [stream.events for stream in run.streams]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    connect = sorted(run.connect_seconds)

    def rank(p: float) -> float:
        return connect[max(0, min(len(connect) - 1, round(p / 100 * len(connect)) - 1))]

    return {
        "transport": run.transport,
        "clients": clients,
        "opened": len(run.streams),
        "failed": dict(run.failures),
        "open_seconds": round(open_seconds, 3),
        "connect_ms": {
            "p50": _ms(rank(50)),
            "p99": _ms(rank(99)),
            "max": _ms(connect[-1]),
            "mean": _ms(sum(connect) / len(connect)),
        }
        if connect
        else None,
        "closed_early": run.closed_early,
        "pings_answered": run.pings,
        "measured_seconds": round(measured, 3),
        "events": {
            "total": sum(counts),
            "per_stream_min": min(counts, default=0),
            "per_stream_max": max(counts, default=0),
            "expected_per_stream": run.expected,
            "streams_complete": run.complete if run.expected is not None else None,
        },
        "latency_ms": run.latency.summary_ms(),
        "spread_ms": run.spread.summary_ms(),
        "loadgen_cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "loadgen_max_rss_kib": usage.ru_maxrss,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    run = Run(args.url, args.events)
    stop = asyncio.Event()
    eof = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    control = asyncio.create_task(read_control(stop, eof)) if args.control else None
    wave = None if args.all_at_once else args.wave
    open_seconds = await open_all(run, args.clients, wave, args.connect_timeout)
    print("ready", flush=True)
    started = time.perf_counter()
    run.ready = True
    run.check_finished()  # --events 0, or every connection failed
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(run.finished.wait())]
    await asyncio.wait(waiters, timeout=args.duration, return_when=asyncio.FIRST_COMPLETED)
    measured = time.perf_counter() - started
    for waiter in waiters:
        waiter.cancel()
    result = summary(run, args.clients, open_seconds, measured)
    print(json.dumps(result), flush=True)
    if control is not None:
        await eof.wait()  # the scenario reads the server's state while the streams are open
    run.closing = True
    for stream in run.streams:
        if stream.transport is not None:
            stream.transport.abort()
    return result


def raise_fd_limit() -> None:
    """Every connection is a descriptor: take as many as the hard limit allows."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "url", help="the stream's URL: http://127.0.0.1:PORT/path?query (SSE) or ws://... "
    )
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--wave", type=int, default=100, help="connections opened together")
    parser.add_argument("--all-at-once", action="store_true", help="open every connection together")
    parser.add_argument("--events", type=int, help="end once every stream has this many")
    parser.add_argument("--duration", type=float, help="end this many seconds after ready")
    parser.add_argument("--connect-timeout", type=float, default=60.0)
    parser.add_argument(
        "--control",
        action="store_true",
        help="read 'stop' from stdin; keep connections open until stdin ends",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    raise_fd_limit()
    asyncio.run(main_async(args))


class LoadGenProcess:
    """A load generator in a process of its own, pinned to ``core``, driven through its
    stdin and stdout (``--control``): ``wait_ready()``, then ``result()`` (the measurement
    ends by itself) or ``stop()`` (end it now), then ``close()`` to let the clients go."""

    def __init__(
        self,
        url: str,
        clients: int,
        *,
        events: int | None = None,
        duration: float | None = None,
        wave: int = 100,
        all_at_once: bool = False,
        connect_timeout: float = 60.0,
        core: int | None = 1,
    ) -> None:
        from bench.common import ROOT, pinned  # not needed by the load generator itself

        command = [sys.executable, "-m", "bench.loadgen", url, "--clients", str(clients)]
        command += ["--wave", str(wave), "--connect-timeout", str(connect_timeout), "--control"]
        if events is not None:
            command += ["--events", str(events)]
        if duration is not None:
            command += ["--duration", str(duration)]
        if all_at_once:
            command.append("--all-at-once")
        self.process = subprocess.Popen(
            pinned(command, core),
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        # Lines are read by a thread so that every wait can have a timeout.
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def _next_line(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"the load generator said nothing for {timeout} s") from None
        if line is None:
            raise RuntimeError(f"the load generator exited ({self.process.wait()})")
        return line

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Until every connection is open or has failed."""
        line = self._next_line(timeout)
        if line != "ready":
            raise RuntimeError(f"the load generator said {line!r}, not ready")

    def result(self, timeout: float = 300.0) -> dict[str, Any]:
        """The results, once the measurement has ended (events, duration, or ``stop``)."""
        result: dict[str, Any] = json.loads(self._next_line(timeout))
        return result

    def stop(self, timeout: float = 60.0) -> dict[str, Any]:
        """End the measurement now; the results. The connections stay open until close()."""
        assert self.process.stdin is not None
        self.process.stdin.write("stop\n")
        self.process.stdin.flush()
        return self.result(timeout)

    def close(self) -> None:
        """Close every connection and end the process."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


if __name__ == "__main__":
    main()
