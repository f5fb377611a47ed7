"""A soak client's life, whatever its transport: connect to either server, read until the
server ends the stream or the client drops it, wait as a browser would, and connect again
with the cursor it has, until the run is over and it has everything through its target.

The transports (``tests.soak.sse_client``, ``tests.soak.websocket_client``) say how one
connection goes and how long to wait after it. Both drop their connections at random
moments while the run lasts, half of the time a clean close, half of the time an abrupt
reset (RST), and one client of each can be told to stop reading for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

from tests.soak.check import Received

# Reconnect delay before the server has sent one (EventSource's is similar).
DEFAULT_RETRY_MS = 3000

Key = TypeVar("Key")


@dataclass
class Stats:
    """Shared by the clients of one transport, for the progress line and the summary."""

    deliveries: int = 0
    open_streams: int = 0
    #: Connections made (TCP connected).
    connections: int = 0
    #: Attempts to connect after a client's first, whether they connected or not.
    reconnects: int = 0
    #: Connections the server's port refused (it was down).
    refused: int = 0
    #: Answers by HTTP status (101 for a WebSocket handshake that succeeded).
    statuses: dict[int, int] = field(default_factory=dict)
    #: How connections ended, by kind ("close 4000", "dropped by the client", ...).
    endings: dict[str, int] = field(default_factory=dict)
    resets: list[str] = field(default_factory=list)
    #: Messages the protocol does not allow there, for the report.
    unexpected: list[str] = field(default_factory=list)


def count(counts: dict[Key, int], key: Key) -> None:
    counts[key] = counts.get(key, 0) + 1


class Client:
    """One client, on ``transport``."""

    transport: ClassVar[str]

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
        self.query = "&".join(f"channel={c}" for c in channels)
        self.received = Received(frozenset(channels))
        self.rng = rng
        self.stats = stats
        self.mean_lifetime = mean_lifetime
        #: The id of the last event or control event received whole ("" before any).
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
        #: Why the client stopped reconnecting, when the server told it to.
        self.gave_up: str | None = None
        #: Where the client is now, for the report of a client that fell behind.
        self.state = "new"
        #: Recent connections (port, cursor sent, how it ended), for a failure's report.
        self.trace: deque[str] = deque(maxlen=50)
        self._attempts = 0

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
            self._attempts += 1
            if self._attempts > 1:
                self.stats.reconnects += 1
            ending, wait = await self.connect(host, port)
            count(self.stats.endings, ending)
            self.trace.append(
                f"{loop.time():.2f} {port} from {sent!r}: {ending} at {self.cursor!r}"
            )
            if self.stalled_connection_ended == "stalled":
                self.stalled_connection_ended = ending
            if self.done.is_set():
                return
            if wait is None:
                self.gave_up = ending
                self.state = f"gave up after {ending}"
                return
            self.state = f"waiting after {ending}"
            await asyncio.sleep(wait)

    async def connect(self, host: str, port: int) -> tuple[str, float | None]:
        """One connection, to its end. Returns how it ended (a kind, counted in the
        summary) and the seconds to wait before the next one (None: never again)."""
        raise NotImplementedError

    def dropped(self) -> tuple[str, float]:
        """What ``connect`` returns when this client dropped its connection: it reconnects
        soon, as a page that was reloaded or came back online."""
        return "dropped by the client", self.rng.uniform(0, 0.5)

    def lifetime(self) -> float | None:
        """Seconds until this client drops the connection it has just made; None: never."""
        cut = self.rng.expovariate(1 / self.mean_lifetime)
        return cut if self.churn and not self.stalls else None

    async def tcp_connect(self, host: str, port: int) -> socket.socket:
        """A connected socket: with a small receive window for a client that stalls, as on
        a slow mobile link (loopback's would otherwise hold megabytes, and the server would
        not notice the stall for a long time). Counts refused connections."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if self.stalls:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException as exc:
            sock.close()
            if isinstance(exc, ConnectionRefusedError):
                self.stats.refused += 1
            raise
        self.stats.connections += 1
        return sock

    async def stop_reading(
        self, pause: Callable[[], None] = lambda: None, resume: Callable[[], None] = lambda: None
    ) -> None:
        """The stall, once it is due: ``pause`` stops the socket's reads, if not reading is
        not enough to stop them; the socket's buffers fill and the server must cope."""
        assert self.stall is not None
        seconds = self.stall[1]
        self.stall = None
        pause()
        loop = asyncio.get_running_loop()
        self.trace.append(f"{loop.time():.2f} stopped reading for {seconds:g} s")
        await asyncio.sleep(seconds)
        resume()
        self.trace.append(f"{loop.time():.2f} reading again")
        self.stalled_connection_ended = "stalled"

    def stall_due(self, loop: asyncio.AbstractEventLoop) -> bool:
        return self.stall is not None and loop.time() >= self.stall[0]


def reset_on_close(sock: socket.socket | None) -> None:
    """Make closing ``sock`` send a reset instead of a FIN (SO_LINGER 0)."""
    if sock is None:
        return
    # Closed already (the connection was lost meanwhile): nothing left to reset.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
