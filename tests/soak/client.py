"""A soak client's life, whatever its transport: connect to either server, read until the
server ends the stream or the client drops it, wait as a browser would, and connect again
with the cursor it has, until the run is over and it has everything through its target.

The transports (``tests.soak.sse_client``, ``tests.soak.websocket_client``) say how one
connection goes and how long to wait after it. Both drop their connections at random
moments while the run lasts, half of the time a clean close, half of the time an abrupt
reset (RST), and one client of each can be told to stop reading for a while.

A logged-in client (one with a ``Browser``, ``tests.soak.accounts``) sends its browser's
session cookie, records each connection (``check.Connection``) for the revocation check,
and, refused because its session was ended, has its browser log in again and resumes.
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

from tests.soak.accounts import Browser
from tests.soak.check import Connection, Received

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
    #: Messages the protocol does not allow there, and refusals of a live session.
    unexpected: list[str] = field(default_factory=list)
    #: Logged-in clients' connections refused (403, 4403) because a revocation ended their
    #: session.
    refused_sessions: int = 0
    #: Logins again after such a refusal.
    logins: int = 0


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
        browser: Browser | None = None,
    ) -> None:
        self.number = number
        self.servers = servers
        self.query = "&".join(f"channel={c}" for c in channels)
        self.browser = browser
        user = None if browser is None else browser.account.pk
        self.received = Received(frozenset(channels), user=user)
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
        #: The session cookie the current connection sends (None: an anonymous client).
        self.session: str | None = None
        #: The logged-in client's current connection, while its stream is opening or open.
        self.connection: Connection | None = None
        #: Whether the current connection counts among its user's opening streams.
        self._opening = False
        #: Set by ``forbidden``: the browser must log in again before the next connection.
        self._log_in = False

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
            self._begin(port)
            try:
                ending, wait = await self.connect(host, port)
            finally:
                self._end()
            count(self.stats.endings, ending)
            session = "" if self.session is None else f" with session {self.session[:8]}…"
            self.trace.append(
                f"{loop.time():.2f} {port} from {sent!r}{session}: {ending} at {self.cursor!r}"
            )
            if self.stalled_connection_ended == "stalled":
                self.stalled_connection_ended = ending
            if self.done.is_set():
                return
            if self._log_in and self.browser is not None and self.session is not None:
                self._log_in = False
                if await self.browser.log_in_again(self.session):
                    self.stats.logins += 1
            if wait is None:
                self.gave_up = ending
                self.state = f"gave up after {ending}"
                return
            self.state = f"waiting after {ending}"
            await asyncio.sleep(wait)

    def _begin(self, port: int) -> None:
        """A logged-in client's connection begins: it sends its browser's cookie now."""
        if self.browser is None:
            return
        self.session = self.browser.session
        self.connection = Connection(self.session, port, start=len(self.received.events))
        self.received.connections.append(self.connection)
        self._opening = True
        self.browser.account.opening_started()

    def _end(self) -> None:
        if self.connection is not None:
            self.connection.end = len(self.received.events)
            self.connection = None
        self._opened()

    def _opened(self) -> None:
        if self._opening and self.browser is not None:
            self._opening = False
            self.browser.account.opening_ended()

    def streaming(self) -> None:
        """The transports call this at each control message (``notify.open``,
        ``catchup-start``, ``reset``): the server authorized the stream and subscribed it
        before it sent one."""
        if self.connection is not None and self.connection.streaming_since is None:
            self.connection.streaming_since = asyncio.get_running_loop().time()
        self._opened()

    def forbidden(self, ending: str) -> tuple[str, float | None]:
        """What ``connect`` returns when the server refused the stream as not allowed: a
        logged-in client whose session a revocation ended logs in again and reconnects
        soon; any other refusal is reported, and an anonymous client gives up."""
        if self.browser is None or self.session is None:
            return ending, None
        if self.session in self.browser.account.ended_sessions:
            self.stats.refused_sessions += 1
        else:
            self.stats.unexpected.append(
                f"client {self.number}: {ending} with session {self.session[:8]}…, which no "
                "revocation ended"
            )
        self._log_in = True
        return ending, self.rng.uniform(0, 0.5)

    async def connect(self, host: str, port: int) -> tuple[str, float | None]:
        """One connection, to its end. Returns how it ended (a kind, counted in the
        summary) and the seconds to wait before the next one (None: never again)."""
        raise NotImplementedError

    def dropped(self) -> tuple[str, float]:
        """What ``connect`` returns when this client dropped its connection: it reconnects
        soon, as a page that was reloaded or came back online."""
        return "dropped by the client", self.rng.uniform(0, 0.5)

    def cookie_header(self) -> dict[str, str]:
        """The ``Cookie`` header of a logged-in client's requests (none for the others)."""
        if self.session is None:
            return {}
        from django.conf import settings

        return {"Cookie": f"{settings.SESSION_COOKIE_NAME}={self.session}"}

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
