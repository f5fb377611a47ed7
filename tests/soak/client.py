"""A soak client: a real SSE client on a raw asyncio socket, behaving like ``EventSource``.

It parses what it reads with ``tests.sse_parser`` (the WHATWG rules), resumes with the last
event ID it saw (the ``Last-Event-ID`` header), waits the server's ``retry:`` time before
reconnecting after the server ended a stream or could not be reached, and, while the run
lasts, drops its connection at random moments: half of the time a clean close, half of the
time an abrupt reset (RST). One client can be told to stop reading for a while.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
from collections import deque
from dataclasses import dataclass, field

from tests.soak.check import Received
from tests.sse_parser import SSEParser

# Reconnect delay before the first retry: field arrives (EventSource's is similar).
DEFAULT_RETRY_MS = 3000


@dataclass
class Stats:
    """Shared by all clients, for the progress line."""

    deliveries: int = 0
    open_streams: int = 0
    connections: int = 0
    refused: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    resets: list[str] = field(default_factory=list)


class Client:
    def __init__(
        self,
        number: int,
        servers: list[tuple[str, int]],
        channels: list[str],
        rng: random.Random,
        stats: Stats,
        mean_lifetime: float,
    ) -> None:
        self.number = number
        self.servers = servers
        self.path = "/notify/stream/?" + "&".join(f"channel={c}" for c in channels)
        self.received = Received(frozenset(channels))
        self.rng = rng
        self.stats = stats
        self.mean_lifetime = mean_lifetime
        self.cursor = ""
        self.retry_ms = DEFAULT_RETRY_MS
        #: Random disconnects stop once the run is over, so that every client catches up.
        self.churn = True
        #: Whether this client stops reading once (it then never drops its connections).
        self.stalls = False
        #: (start, seconds): stop reading at this loop time for this long.
        self.stall: tuple[float, float] | None = None
        self.stalled_connection_ended: str | None = None
        #: The id up to which the client must get its channels' events before it stops.
        self.target: int | None = None
        self.done = asyncio.Event()
        #: Where the client is now, for the report of a client that fell behind.
        self.state = "new"
        #: Recent connections (port, cursor sent, how it ended), for a failure's report.
        self.trace: deque[str] = deque(maxlen=50)

    @property
    def position(self) -> int:
        return int(self.cursor) if self.cursor else 0

    def check_done(self) -> None:
        if self.target is not None and self.position >= self.target:
            self.done.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.done.is_set():
            host, port = self.rng.choice(self.servers)
            sent = self.cursor
            try:
                ended_by_server = await self._connect(host, port, loop)
                ending = "ended by the server" if ended_by_server else "dropped by the client"
            except (OSError, EOFError) as exc:
                # Refused (a server is down), or cut by the server: as EventSource does,
                # wait the reconnection time, then try again.
                if isinstance(exc, ConnectionRefusedError):
                    self.stats.refused += 1
                ended_by_server = True
                ending = f"cut ({type(exc).__name__})"
            self.trace.append(
                f"{loop.time():.2f} {port} from {sent!r}: {ending} at {self.cursor!r}"
            )
            if self.stalled_connection_ended == "stalled":
                self.stalled_connection_ended = ending
            if self.done.is_set():
                return
            self.state = f"waiting after {ending}"
            if ended_by_server:
                await asyncio.sleep(self.retry_ms / 1000)
            else:
                await asyncio.sleep(self.rng.uniform(0, 0.5))

    async def _connect(self, host: str, port: int, loop: asyncio.AbstractEventLoop) -> bool:
        """One connection. True when the server ended it (or it failed), False when this
        client dropped it."""
        self.state = f"connecting to {port}"
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if self.stalls:
            # A small receive window, as on a slow mobile link: loopback's would otherwise
            # hold megabytes, and the server would not notice the stall for a long time.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        try:
            await loop.sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        self.state = f"connected to {port}"
        self.stats.connections += 1
        cut = self.rng.expovariate(1 / self.mean_lifetime)
        abrupt = self.rng.random() < 0.5
        try:
            writer.write(self._request(host, port))
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            self.stats.statuses[status] = self.stats.statuses.get(status, 0) + 1
            if status != 200:
                return True
            chunked = b"transfer-encoding: chunked" in head.lower()
            self.state = f"streaming from {port} since {loop.time():.1f}"
            self.stats.open_streams += 1
            try:
                async with asyncio.timeout(cut if self.churn and not self.stalls else None) as t:
                    ended = await self._read(reader, chunked, loop, t)
                return ended
            except TimeoutError:
                if not self.churn:
                    raise
                return False
            finally:
                self.stats.open_streams -= 1
        finally:
            if abrupt:
                # SO_LINGER 0: closing sends a reset instead of a FIN.
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort() if abrupt else writer.close()

    def _request(self, host: str, port: int) -> bytes:
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Accept: text/event-stream",
            "Cache-Control: no-store",
        ]
        if self.cursor:
            lines.append(f"Last-Event-ID: {self.cursor}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def _read(
        self,
        reader: asyncio.StreamReader,
        chunked: bool,
        loop: asyncio.AbstractEventLoop,
        deadline: asyncio.Timeout,
    ) -> bool:
        parser = SSEParser(last_event_id=self.cursor)
        while True:
            if self.stall is not None and loop.time() >= self.stall[0]:
                await self._stall(reader, chunked, parser)
                continue
            if not self.churn:
                deadline.reschedule(None)
            if chunked:
                line = await reader.readline()
                if not line.endswith(b"\n"):
                    raise EOFError("the connection ended inside the response")
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    return True
                data = (await reader.readexactly(size + 2))[:-2]
            else:
                data = await reader.read(1 << 16)
                if not data:
                    return True
            self._feed(parser, data)
            if self.done.is_set():
                return False

    async def _stall(self, reader: asyncio.StreamReader, chunked: bool, parser: SSEParser) -> None:
        assert self.stall is not None
        seconds = self.stall[1]
        self.stall = None
        # Stop reading: the socket's buffers fill and the server must cope without us.
        reader._transport.pause_reading()  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        self.trace.append(f"{loop.time():.2f} stopped reading for {seconds:g} s")
        await asyncio.sleep(seconds)
        reader._transport.resume_reading()  # type: ignore[attr-defined]
        self.trace.append(f"{loop.time():.2f} reading again")
        self.stalled_connection_ended = "stalled"

    def _feed(self, parser: SSEParser, data: bytes) -> None:
        for event in parser.feed(data):
            if event.type.startswith("notify."):
                if event.type == "notify.open" and self.received.first_cursor is None:
                    self.received.first_cursor = int(event.last_event_id)
                elif event.type == "notify.reset":
                    self.stats.resets.append(f"client {self.number}: {event.data}")
                continue
            channel = json.loads(event.data)["channel"]
            self.received.events.append((int(event.last_event_id), channel))
            self.stats.deliveries += 1
        parser.comments.clear()
        if parser.retry is not None:
            self.retry_ms = parser.retry
        self.cursor = parser.last_event_id
        self.check_done()
