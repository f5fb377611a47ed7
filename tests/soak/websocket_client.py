"""A soak client on the WebSocket transport (``notify.websocket``), with the ``websockets``
asyncio client, behaving as a browser page's client of the protocol would.

It connects to ``/notify/ws/`` with its cursor as ``lastEventId``: the id of the last event
or control event it received whole. It keeps the ``notify.retry`` delay and, when the
server closes, does what the close code says: reconnect after that delay (ended, revoked,
too slow, or shutdown, whose ``notify.retry`` just came), never again (a bad request,
forbidden; a logged-in client refused because its session ended logs in again instead),
or back off (anything else: too many streams, unavailable, an internal error, no
close frame (1006), a failed connection or handshake). Like a browser it sends no pings:
daphne pings it, and it sends the page's cookies: a logged-in client's session cookie. The
message types and close codes are ``notify.websocket``'s.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Origin

from notify import sse, websocket
from tests.soak.client import Client, count, reset_on_close

RECONNECT = {websocket.ENDED, websocket.REVOKED, websocket.TOO_SLOW, websocket.SHUTDOWN}
# What a browser reports when the connection ended without a close frame.
ABNORMAL = 1006
# Control events: each carries the id the client then has everything through.
CONTROL = {sse.OPEN, sse.CATCHUP_START, sse.CATCHUP_END, sse.RESET}
# The longest backoff between failed connections.
MAX_BACKOFF_MS = 10_000


class WebSocketClient(Client):
    transport = "websocket"

    #: Failed connections in a row: the backoff doubles with each.
    failures = 0

    async def connect(self, host: str, port: int) -> tuple[str, float | None]:
        self.state = f"connecting to {port}"
        try:
            connection = await connect(
                f"ws://{host}:{port}/notify/ws/?{self.query}"
                + (f"&lastEventId={self.cursor}" if self.cursor else ""),
                sock=await self.tcp_connect(host, port),
                # A page of the site, as a browser sends it.
                origin=Origin(f"http://{host}:{port}"),
                additional_headers=self.cookie_header(),
                proxy=None,
                ping_interval=None,
                close_timeout=2,
            )
        except InvalidStatus as exc:
            count(self.stats.statuses, exc.response.status_code)
            return f"handshake answered {exc.response.status_code}", self.backoff()
        except (OSError, InvalidHandshake) as exc:
            return f"could not connect ({type(exc).__name__})", self.backoff()
        count(self.stats.statuses, 101)
        self.state = f"streaming from {port} since {asyncio.get_running_loop().time():.1f}"
        lifetime = self.lifetime()
        abrupt = self.rng.random() < 0.5
        self.stats.open_streams += 1
        try:
            async with asyncio.timeout(lifetime) as deadline:
                await self._read(connection, deadline)
        except TimeoutError:
            pass  # its time is up: drop it
        except ConnectionClosed as closed:
            code = ABNORMAL if closed.rcvd is None else closed.rcvd.code
            if code == websocket.FORBIDDEN:
                return self.forbidden(f"close {code}")
            return f"close {code}", self.after_close(code)
        finally:
            self.stats.open_streams -= 1
        # Dropped, or done: it has everything it is owed.
        self.state = f"dropping its connection to {port}"
        if abrupt:
            reset_on_close(connection.transport.get_extra_info("socket"))
            connection.transport.abort()
        else:
            await connection.close()
        return self.dropped()

    def after_close(self, code: int) -> float | None:
        if code == websocket.BAD_REQUEST:
            return None
        if code in RECONNECT:
            return self.retry_ms / 1000
        return self.backoff()

    def backoff(self) -> float:
        """The wait after a failure: the retry delay, doubled after each failure in a row
        (up to MAX_BACKOFF_MS), less a random part so that clients spread out."""
        self.failures += 1
        delay = min(self.retry_ms * 2 ** (self.failures - 1), MAX_BACKOFF_MS)
        return delay * self.rng.uniform(0.5, 1.0) / 1000

    async def _read(self, connection: ClientConnection, deadline: asyncio.Timeout) -> None:
        """Read until the connection closes (ConnectionClosed) or the client has all it
        is owed."""
        loop = asyncio.get_running_loop()
        first = True
        while not self.done.is_set():
            if self.stall_due(loop):
                # Not calling recv() is enough: past max_queue messages, websockets stops
                # reading the socket.
                await self.stop_reading()
            if not self.churn:
                deadline.reschedule(None)
            text = await connection.recv()
            try:
                message = json.loads(text) if isinstance(text, str) else None
            except ValueError:
                message = None
            if not isinstance(message, dict):
                self.unexpected(f"not a JSON object in a text message: {text[:100]!r}")
                continue
            kind = message.get("type")
            if first and kind not in (websocket.RETRY, websocket.ERROR):
                self.unexpected(f"first message {message}")
            first = False
            self.receive(kind, message)

    def receive(self, kind: Any, message: dict[str, Any]) -> None:
        if kind is None:
            self.received.events.append((message["id"], message["channel"]))
            self.stats.deliveries += 1
            self.cursor = str(message["id"])
        elif kind == websocket.RETRY:
            self.retry_ms = message["retry"]
        elif kind in CONTROL:
            self.streaming()
            if kind == sse.OPEN and self.received.first_cursor is None:
                self.received.first_cursor = message["id"]
            elif kind == sse.RESET:
                self.stats.resets.append(f"client {self.number}: {message}")
            self.cursor = str(message["id"])
            # A stream opened: failures are behind.
            self.failures = 0
        elif kind == websocket.ERROR:
            self.trace.append(f"notify.error {message.get('code')}: {message.get('reason')}")
        else:
            self.unexpected(f"type {kind!r}")
        self.check_done()

    def unexpected(self, what: str) -> None:
        self.stats.unexpected.append(f"client {self.number}: {what}")
