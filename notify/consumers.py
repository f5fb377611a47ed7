"""The stream over a WebSocket, as a Channels consumer.

Same stream as the SSE one (``notify.asgi``), through the same admission (authorization,
limits: ``notify.admission``), the same ``EventStream`` (replay, then live, no gap and no
duplicate at the seam) and the same hub: one broker subscription per process serves both
transports. Only the wire differs: JSON text messages (``notify.websocket``)::

    ws://host/notify/ws/?channel=a&channel=b&lastEventId=42

The client sends nothing; the server closes with a code that says what to do next (the
table in ``notify.websocket``). Route it with Channels (see ``notify.routing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from channels.consumer import AsyncConsumer
from django.core.exceptions import ValidationError

from notify import limits, metrics, shutdown, websocket
from notify.admission import Refused, admitted, header
from notify.backpressure import websocket_flow_control
from notify.conf import notify_settings
from notify.hub import Subscriber, cancelled_by_hub
from notify.stream import EventStream, StreamRequest, parse_stream_request
from notify.wire import WEBSOCKET

logger = logging.getLogger("notify.consumers")


Send = Callable[[dict[str, Any]], Awaitable[None]]

# What a send raises once the client has closed, before the consumer is told: an OSError
# by the ASGI spec (uvicorn), autobahn's Disconnected under daphne.
CONNECTION_CLOSED: tuple[type[Exception], ...] = (OSError,)
try:
    from autobahn.exception import Disconnected
except ImportError:  # not under daphne
    pass
else:
    CONNECTION_CLOSED = (OSError, Disconnected)


def server_send(send: Send) -> Send:
    """The server's own ``send`` under Channels' session middleware (``AuthMiddlewareStack``),
    which wraps it to save a changed session with an HTTP response. A stream changes no
    session, so its messages go straight to the server: that spares every message of every
    stream the wrapper's checks, and lets ``websocket_flow_control`` find daphne's
    connection behind ``send``."""
    while (inner := getattr(getattr(send, "__self__", None), "real_send", None)) is not None:
        send = inner
    return send


class StreamConsumer(AsyncConsumer):
    """One WebSocket stream, routed by Channels like any consumer (``as_asgi()``).

    It runs its own ``__call__`` instead of Channels' message dispatch: the stream writes
    from the connection's task while one watcher waits for the client to leave, as the SSE
    stream does. Channels' loop would hold a task more per connection, and, in a project
    with ``CHANNEL_LAYERS``, a channel of the layer with a receive on it per connection:
    the stream takes its events from the process's hub, never from a channel layer.
    """

    subscriber: Subscriber | None = None
    server_send: Send

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scope = scope
        self.base_send = send
        self.server_send = server_send(send)
        if (await receive())["type"] != "websocket.connect":
            return  # the client left before its handshake was answered
        task = asyncio.current_task()
        watcher = asyncio.ensure_future(_until_disconnect(receive))
        watcher.add_done_callback(lambda done: self._client_gone(done, task))
        try:
            await self._serve()
        except asyncio.CancelledError:
            if not watcher.done():
                raise
            # The client left while the stream was being let in (see _client_gone).
            if task is not None:
                task.uncancel()
        except CONNECTION_CLOSED:
            # The client closed while a message was on its way (its close frame came in
            # before the server told this consumer): the client is gone, nothing failed.
            pass
        except Exception:
            logger.exception("notify: a WebSocket stream failed")
            with contextlib.suppress(Exception):
                await self._close(websocket.INTERNAL_ERROR, "internal error")
        finally:
            watcher.cancel()

    def _client_gone(self, watcher: asyncio.Future[None], task: asyncio.Task[Any] | None) -> None:
        """The client left: a stream ends at its next turn; before it has a subscriber
        (waiting for the database or the broker to let it in), its task is cancelled."""
        if watcher.cancelled():
            return  # the stream ended first, and stopped the watcher
        if self.subscriber is not None:
            self.subscriber.close("client-gone")
        elif task is not None and not task.done():
            task.cancel()

    async def _serve(self) -> None:
        scope = self.scope
        await self.server_send({"type": "websocket.accept"})
        params = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        try:
            request = parse_stream_request(params, header(scope, b"last-event-id"))
        except ValidationError as exc:
            await self._refuse(websocket.BAD_REQUEST, exc.messages[0], None)
            return
        shutdown.watch()
        if shutdown.draining():
            await self._send([websocket.retry_message(shutdown.reconnect_delay())])
            await self._close(websocket.SHUTDOWN, "the server is shutting down")
            return
        try:
            async with admitted(scope, request) as subscriber:
                await self._stream(request, subscriber)
        except Refused as refusal:
            code = websocket.REFUSAL_CODES.get(refusal.status, websocket.BAD_REQUEST)
            await self._refuse(code, refusal.reason, refusal.retry_after)

    async def _stream(self, request: StreamRequest, subscriber: Subscriber) -> None:
        self.subscriber = subscriber
        # Under daphne, whose send() never waits, pause the stream while the client does
        # not read; None under other servers, where ``await send()`` waits instead.
        flow = websocket_flow_control(self.server_send, subscriber)
        metrics.STREAMS_OPENED.labels(transport="websocket").inc()
        try:
            await self._send([websocket.retry_message(notify_settings.RETRY_MS)])
            lifetime = limits.stream_lifetime()
            stream = EventStream(subscriber, request.cursor, lifetime, WEBSOCKET)
            async for messages in stream.body():
                await self._send(messages)
        except asyncio.CancelledError:
            if not cancelled_by_hub(subscriber):
                raise
        finally:
            if flow is not None:
                flow.detach()
        code = websocket.CLOSE_CODES.get(subscriber.closed or "")
        if code is not None:
            await self._close(code, subscriber.closed or "")

    async def _refuse(self, code: int, reason: str, retry_after: int | None) -> None:
        """Say why, then close with ``code``. The first message is still ``notify.retry``,
        as on every connection: the SSE answer's ``Retry-After`` when it has one (the
        client should not be back sooner), else the usual delay."""
        retry = notify_settings.RETRY_MS if retry_after is None else retry_after * 1000
        await self._send([websocket.retry_message(retry), websocket.error_message(code, reason)])
        await self._close(code, reason)

    async def _send(self, messages: list[str]) -> None:
        send = self.server_send
        for text in messages:
            await send({"type": "websocket.send", "text": text})

    async def _close(self, code: int, reason: str) -> None:
        await self.server_send(
            {"type": "websocket.close", "code": code, "reason": websocket.close_reason(reason)}
        )


async def _until_disconnect(receive: Any) -> None:
    while (await receive())["type"] != "websocket.disconnect":
        pass  # what the client sends is ignored: it has nothing to say
