"""A soak client on SSE: a raw asyncio socket, behaving like ``EventSource``.

It parses what it reads with ``tests.sse_parser`` (the WHATWG rules), resumes with the last
event ID it saw (the ``Last-Event-ID`` header), and waits the server's ``retry:`` time
before reconnecting after the server ended a stream or could not be reached. A logged-in
client sends its session cookie, as ``EventSource`` sends the page's cookies.
"""

from __future__ import annotations

import asyncio
import json

from notify import sse
from tests.soak.client import Client, count, reset_on_close
from tests.sse_parser import SSEParser

# Control events after which the client has everything through their id.
CONTROL = {sse.OPEN, sse.CATCHUP_START, sse.CATCHUP_END, sse.RESET}


class SSEClient(Client):
    transport = "sse"

    async def connect(self, host: str, port: int) -> tuple[str, float | None]:
        self.state = f"connecting to {port}"
        try:
            status = await self._stream(host, port)
            if status is None:
                return self.dropped()
            if status == 403:
                return self.forbidden("answered 403")
            if status != 200:
                return f"answered {status}", self.retry_ms / 1000
            return "ended by the server", self.retry_ms / 1000
        except (OSError, EOFError) as exc:
            # Refused (a server is down), or cut by the server: as EventSource does, wait
            # the reconnection time, then try again.
            return f"cut ({type(exc).__name__})", self.retry_ms / 1000

    async def _stream(self, host: str, port: int) -> int | None:
        """One connection. The status of the answer when the server ended it, None when
        this client dropped it; raises OSError or EOFError when it failed."""
        loop = asyncio.get_running_loop()
        sock = await self.tcp_connect(host, port)
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        self.state = f"connected to {port}"
        lifetime = self.lifetime()
        abrupt = self.rng.random() < 0.5
        try:
            writer.write(self._request(host, port))
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            count(self.stats.statuses, status)
            if status != 200:
                return status
            chunked = b"transfer-encoding: chunked" in head.lower()
            self.state = f"streaming from {port} since {loop.time():.1f}"
            self.stats.open_streams += 1
            try:
                async with asyncio.timeout(lifetime) as deadline:
                    return status if await self._read(reader, chunked, loop, deadline) else None
            except TimeoutError:
                if not self.churn:
                    raise
                return None
            finally:
                self.stats.open_streams -= 1
        finally:
            if abrupt:
                reset_on_close(writer.get_extra_info("socket"))
                writer.transport.abort()
            else:
                writer.close()

    def _request(self, host: str, port: int) -> bytes:
        lines = [
            f"GET /notify/stream/?{self.query} HTTP/1.1",
            f"Host: {host}:{port}",
            "Accept: text/event-stream",
            "Cache-Control: no-store",
            *(f"{name}: {value}" for name, value in self.cookie_header().items()),
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
            if self.stall_due(loop):
                transport = reader._transport  # type: ignore[attr-defined]
                await self.stop_reading(transport.pause_reading, transport.resume_reading)
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

    def _feed(self, parser: SSEParser, data: bytes) -> None:
        for event in parser.feed(data):
            if event.type in CONTROL:
                self.streaming()
                if event.type == sse.OPEN and self.received.first_cursor is None:
                    self.received.first_cursor = int(event.last_event_id)
                elif event.type == sse.RESET:
                    self.stats.resets.append(f"client {self.number}: {event.data}")
                continue
            if event.type.startswith(sse.CONTROL_PREFIX):
                # No other type is reserved for the stream: an event of the reserved
                # channels (a stored revocation) must never be streamed.
                self.stats.unexpected.append(f"client {self.number}: {event.type} {event.data}")
                continue
            channel = json.loads(event.data)["channel"]
            self.received.events.append((int(event.last_event_id), channel))
            self.stats.deliveries += 1
        parser.comments.clear()
        if parser.retry is not None:
            self.retry_ms = parser.retry
        self.cursor = parser.last_event_id
        self.check_done()
