"""Serving streams at the ASGI level, in front of Django's request handler.

Django's ASGI handler gives every request its own thread for sync work (asgiref's
ThreadSensitiveContext), kept until the response ends: for an endless stream that is a
thread per open connection. ``NotifyASGIHandler`` wraps the project's ASGI application and
serves the URL of ``notify:stream`` itself, so an open stream holds no thread and no
database connection, only a subscriber in the process's hub::

    # project/asgi.py
    from django.core.asgi import get_asgi_application
    from notify.asgi import NotifyASGIHandler

    application = NotifyASGIHandler(get_asgi_application())

Every other request goes to the wrapped application unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

from django.core.exceptions import ValidationError
from django.core.handlers.asgi import get_script_prefix
from django.urls import Resolver404, resolve

from notify import cors, limits, metrics, shutdown
from notify.admission import Refused, admitted, header
from notify.backpressure import flow_control
from notify.conf import notify_settings
from notify.hub import Subscriber, cancelled_by_hub
from notify.stream import (
    HEADERS,
    EventStream,
    StreamRequest,
    first_frame,
    parse_stream_request,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _encode(headers: Sequence[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


_RESPONSE_HEADERS = _encode(HEADERS)


class NotifyASGIHandler:
    """Serve notify's streams directly; pass everything else to ``application``.

    ``freeze_gc`` (default True) calls ``gc.freeze()`` once per process, when the handler
    is built, that is after Django has loaded: see ``freeze_startup_objects``."""

    def __init__(self, application: ASGIApp, *, freeze_gc: bool = True) -> None:
        self.application = application
        if freeze_gc:
            freeze_startup_objects()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_stream_path(_path_info(scope)):
            await serve_stream(scope, receive, send)
        else:
            await self.application(scope, receive, send)


_frozen = False


def freeze_startup_objects() -> None:
    """Move every object alive now out of the garbage collector's sight (``gc.freeze()``),
    once per process.

    Why: a streaming process keeps thousands of streams waiting, and every full collection
    pauses all of them while it walks every tracked object, most of which are Django's
    startup heap (modules, settings, URL patterns, models) that lives as long as the process
    anyway. Live events keep promoting short-lived objects (each waiting stream's future)
    into the oldest generation, so full collections come every few seconds; with 1k
    streams each took 70-120 ms, and that was notify's p99 (docs/benchmarks.md). Frozen
    objects are still freed by reference counting; only cyclic garbage among them would
    stay, and startup objects are not garbage."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.freeze()


def _path_info(scope: Scope) -> str:
    """The path Django's URL resolver sees for ``scope``: without the script prefix, taken
    as Django's ASGI handler takes it (``FORCE_SCRIPT_NAME``, else the ASGI ``root_path``),
    so that the stream's URL is answered here however the prefix is set."""
    path: str = scope["path"]
    script_name = get_script_prefix(scope)
    return path.removeprefix(script_name) if script_name else path


@functools.lru_cache(maxsize=1024)
def is_stream_path(path: str) -> bool:
    """Whether ``path`` resolves to notify's stream view (cached; cleared when URLs change)."""
    try:
        match = resolve(path)
    except Resolver404:
        return False
    return getattr(match.func, "notify_stream", False)


async def serve_stream(scope: Scope, receive: Receive, send: Send) -> None:
    origin = header(scope, b"origin")
    preflight = cors.preflight_headers(origin) if scope["method"] == "OPTIONS" else None
    if preflight is not None:
        await send({"type": "http.response.start", "status": 204, "headers": _encode(preflight)})
        await send({"type": "http.response.body", "body": b""})
        return
    if scope["method"] != "GET":
        await _plain_response(send, 405, "Streams are read with GET.", [(b"allow", b"GET")])
        return
    last_event_id = header(scope, b"last-event-id")
    params = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    try:
        request = parse_stream_request(params, last_event_id)
    except ValidationError as exc:
        await _plain_response(send, 400, exc.messages[0])
        return
    shutdown.watch()
    if shutdown.draining():
        await _reconnect_elsewhere(send, origin, request.cursor)
        return
    try:
        async with admitted(scope, request) as subscriber:
            await _stream(receive, send, origin, request, subscriber)
    except Refused as refusal:
        extra = []
        if refusal.retry_after is not None:
            extra.append((b"retry-after", str(refusal.retry_after).encode()))
        await _plain_response(send, refusal.status, refusal.reason, extra)


async def _stream(
    receive: Receive,
    send: Send,
    origin: str | None,
    request: StreamRequest,
    subscriber: Subscriber,
) -> None:
    # The client leaving ends the stream at once, even while it waits for events.
    watcher = asyncio.ensure_future(_until_disconnect(receive))
    watcher.add_done_callback(lambda _: subscriber.close("client-gone"))
    # Under daphne, whose send() never waits, pause the stream while the client does not
    # read; None under other servers, where ``await send()`` waits instead.
    flow = flow_control(send, subscriber)
    metrics.STREAMS_OPENED.labels(transport="sse").inc()
    try:
        headers = _RESPONSE_HEADERS + _encode(cors.response_headers(origin))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await _write(send, first_frame(notify_settings.RETRY_MS, request.cursor))
        lifetime = limits.stream_lifetime()
        async for chunk in EventStream(subscriber, request.cursor, lifetime).body():
            await _write(send, chunk)
        # Detached before the response ends (Twisted wants it so); True when it aborted the
        # connection of a stalled client, which leaves nothing to send.
        if flow is None or not flow.detach():
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    except asyncio.CancelledError:
        if not cancelled_by_hub(subscriber):
            raise
        if subscriber.closed == "shutdown":
            _abort_connection(send)
    finally:
        if flow is not None:
            flow.detach()
        watcher.cancel()


async def _reconnect_elsewhere(send: Send, origin: str | None, cursor: str | None) -> None:
    """The answer to a stream opened while the process shuts down: a stream of its first
    frame alone (``retry:``, and ``id:`` so that the client keeps its cursor). Any status
    other than 200 would make EventSource give up for good; this one makes it reconnect,
    to another process."""
    headers = _RESPONSE_HEADERS + _encode(cors.response_headers(origin))
    body = first_frame(shutdown.reconnect_delay(), cursor)
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _write(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": True})


def _abort_connection(send: Send) -> None:
    """Drop a connection with what the server still holds for it, under a server whose
    ``send`` is a method of an object with an asyncio transport (uvicorn's request cycle).

    For a client that stopped reading, at shutdown: uvicorn would close the connection
    gracefully, which waits for its write buffer to reach the client, that is for ever, and
    it waits for every connection to close before it exits. The client loses nothing: it
    resumes from the id of the last event it received whole. daphne needs none of this (it
    drops its connections as it stops); other servers are left as they are."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if isinstance(transport, asyncio.Transport):
        transport.abort()


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _plain_response(
    send: Send, status: int, reason: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = (reason + "\n").encode("utf-8")
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    with contextlib.suppress(OSError):
        await send({"type": "http.response.body", "body": body})
