"""A small HTTP reverse proxy for the browser tests, in front of a test server.

It runs an asyncio loop in a thread of the test process. Every request is recorded; a test can
make it answer the next requests itself with an error status (as nginx does with a 502 when
the application is down) and cut the connections it is streaming::

    proxy = Proxy(server.port)
    proxy.fail_next(5, 503)
    proxy.drop_connections()
    proxy.stop()

One request per connection: the proxy tells both sides ``Connection: close``, so every request
the browser makes is one connection and one record here.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus

from tests.conftest import free_port


@dataclass(frozen=True)
class Request:
    #: time.monotonic() when the request's head was read.
    at: float
    method: str
    target: str
    #: lower-case names
    headers: dict[str, str]
    #: The status the proxy answered itself, None when it forwarded the request.
    failed_with: int | None


@dataclass
class _Failure:
    remaining: int = 0
    status: int = 503
    body: str = ""


@dataclass
class Proxy:
    upstream_port: int
    port: int = field(default_factory=free_port)
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._failure = _Failure()
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-proxy", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the proxy did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, count: int, status: int = 503, body: str | None = None) -> None:
        """Answer the next ``count`` requests with ``status`` (0: forward every request)."""
        if body is None:
            body = "" if status == 204 else f"{status} {HTTPStatus(status).phrase} (test proxy)"
        with self._lock:
            self._failure = _Failure(count, status, body)

    def drop_connections(self) -> None:
        """Cut every connection open through the proxy (streams included), at once."""
        done = threading.Event()

        def drop() -> None:
            for writer in list(self._writers):
                writer.transport.abort()
            done.set()

        self._loop.call_soon_threadsafe(drop)
        done.wait(5)

    def stream_requests(self, path: str = "/notify/stream/") -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.target.startswith(path)]

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # --- in the proxy's thread ---------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port)
        )
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            self._loop.run_until_complete(server.wait_closed())
            self._loop.close()

    def _take_failure(self) -> _Failure | None:
        with self._lock:
            if self._failure.remaining <= 0:
                return None
            self._failure.remaining -= 1
            return self._failure

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            method, target, headers = _parse_head(head)
            failure = self._take_failure()
            with self._lock:
                self.requests.append(
                    Request(
                        time.monotonic(),
                        method,
                        target,
                        headers,
                        None if failure is None else failure.status,
                    )
                )
            if failure is not None:
                await _answer(writer, failure.status, failure.body)
            else:
                await self._forward(head, reader, writer)
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _forward(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            await _answer(writer, 502, "502 Bad Gateway (test proxy: upstream unreachable)")
            return
        self._writers.add(up_writer)
        try:
            up_writer.write(_with_connection_close(head))
            await up_writer.drain()
            response_head = await up_reader.readuntil(b"\r\n\r\n")
            writer.write(_with_connection_close(response_head))
            await writer.drain()
            # The body as it comes, chunk by chunk: an event stream must not be buffered.
            while chunk := await up_reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(up_writer)
            up_writer.close()


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return method, target, headers


def _with_connection_close(head: bytes) -> bytes:
    lines = head.decode("latin-1").split("\r\n")[:-2]
    kept = [line for line in lines if not line.lower().startswith(("connection:", "keep-alive:"))]
    return ("\r\n".join([*kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1")


async def _answer(writer: asyncio.StreamWriter, status: int, body: str) -> None:
    payload = body.encode()
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Connection: close"]
    if status != 204:
        head += ["Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(payload)}"]
    else:
        payload = b""
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
