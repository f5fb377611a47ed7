"""The ceiling: the least a Python ASGI server can do to broadcast events over SSE.

No Django, no database. One Redis pub/sub subscription per process (started by the first
request); every open response has a bounded ``asyncio.Queue``; each Redis message is a
complete SSE frame (the publisher builds it) and is put, as the same bytes object, in every
queue. ``GET`` on any path answers ``text/event-stream`` with a ``retry:`` frame first.

    REDIS_URL=redis://127.0.0.1:6379/0 BARE_CHANNEL=notify-bench:bare \\
        uvicorn bench.bare_asgi:app   # or: daphne bench.bare_asgi:app
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import redis.asyncio as redis

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CHANNEL = os.environ.get("BARE_CHANNEL", "notify-bench:bare")
# As notify's MAX_BUFFER: a stream this far behind is closed rather than buffered for ever.
MAX_BUFFER = 1000
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]
RETRY_FRAME = b"retry: 3000\n\n"
# Put in a stream's queue to end it (its client left, or it fell too far behind).
_END = None

_streams: set[asyncio.Queue[bytes | None]] = set()
_listener: asyncio.Task[None] | None = None
_subscribed: asyncio.Future[None] | None = None


async def _listen(subscribed: asyncio.Future[None]) -> None:
    """Forward every message of CHANNEL to every open stream, for the life of the process."""
    client = redis.Redis.from_url(REDIS_URL)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(CHANNEL)
    except Exception as exc:  # Redis unreachable: the streams waiting for it fail
        subscribed.set_exception(exc)
        raise
    subscribed.set_result(None)
    async for message in pubsub.listen():
        frame: bytes = message["data"]
        behind = []
        for queue in _streams:
            try:
                queue.put_nowait(frame)
            except asyncio.QueueFull:
                behind.append(queue)
        for queue in behind:  # not while iterating: ending one removes it from the set
            _end(queue)


def _end(queue: asyncio.Queue[bytes | None]) -> None:
    _streams.discard(queue)
    # Make room for the end marker: what was buffered is lost anyway.
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(_END)


async def _until_disconnect(receive: Receive, queue: asyncio.Queue[bytes | None]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    _end(queue)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    global _listener, _subscribed
    if scope["type"] != "http":  # lifespan and websockets: nothing to do
        return
    if scope["method"] != "GET":
        await send({"type": "http.response.start", "status": 405, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    if _subscribed is None:
        _subscribed = asyncio.get_running_loop().create_future()
        _listener = asyncio.create_task(_listen(_subscribed))
    # A client that has its first bytes misses no event published after them.
    await asyncio.shield(_subscribed)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(MAX_BUFFER)
    _streams.add(queue)
    watcher = asyncio.create_task(_until_disconnect(receive, queue))
    try:
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": RETRY_FRAME, "more_body": True})
        while (frame := await queue.get()) is not _END:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        with contextlib.suppress(OSError):  # the client may be gone already
            await send({"type": "http.response.body", "body": b""})
    finally:
        _streams.discard(queue)
        watcher.cancel()
