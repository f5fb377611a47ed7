"""Limits on streams: how long one lasts, and how many one user or one address holds open.

A stream ends after ``MAX_STREAM_SECONDS`` (±10 %, so that clients connected together do not
all reconnect together); the client resumes from its cursor and misses nothing.

Open streams are counted per owner: ``user:<pk>`` for a logged-in user (when the stream
looked one up), else ``ip:<address>``. Each process counts its own streams and, with Redis,
keeps them in a hash of its own that expires unless refreshed (as ``notify.presence``
does), so that a process that dies stops counting. A new stream first counts itself, then
reads the total over every process: two processes admitting at the same moment may both
refuse, but never both admit beyond the limit.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
import weakref
from collections import Counter
from collections.abc import Mapping
from typing import Any

from notify.broker import get_broker
from notify.conf import notify_settings

logger = logging.getLogger("notify.limits")

# What a refused client is told to wait, in seconds: streams are long-lived, so a slot
# rarely frees within a few seconds.
RETRY_AFTER = 30
# The spread of a stream's lifetime around MAX_STREAM_SECONDS.
JITTER = 0.1


def stream_lifetime() -> float | None:
    """How long the next stream may last, in seconds (None: for ever)."""
    limit = notify_settings.MAX_STREAM_SECONDS
    if limit is None:
        return None
    return limit * random.uniform(1 - JITTER, 1 + JITTER)


def client_address(scope: Mapping[str, Any]) -> str:
    """The address of the client that opened the connection. Behind a proxy this is the
    proxy's: see SECURITY.md."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def owner(user_id: str | None, address: str) -> tuple[str, int | None]:
    """The key a stream is counted under, with that key's limit (None: no limit)."""
    if user_id is not None:
        return f"user:{user_id}", notify_settings.MAX_STREAMS_PER_USER
    return f"ip:{address}", notify_settings.MAX_STREAMS_PER_IP


class StreamCounter:
    """The open streams of one event loop, per owner, shared with other processes through
    the broker."""

    def __init__(self) -> None:
        self.key = uuid.uuid4().hex
        self.counts: Counter[str] = Counter()
        # Changes and full reports to the broker are sent one at a time, in order, so that a
        # report never overtakes a change it already includes.
        self.lock = asyncio.Lock()
        self.dirty = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._refresher = asyncio.get_running_loop().create_task(
            self._refresh(), name="notify-stream-counts"
        )

    async def acquire(self, name: str, limit: int) -> bool:
        """Count a new stream of ``name``; False (and nothing counted) when that would be
        more than ``limit`` streams over every process. A stream with no limit is not
        counted at all (``notify.admission``)."""
        async with self.lock:
            self.counts[name] += 1
            total = await self._change_and_count(name, 1)
        if total > limit:
            self.release(name)
            return False
        return True

    def release(self, name: str) -> None:
        """Stop counting a stream of ``name``. Safe to call while the stream is cancelled:
        the broker is told by a task of its own."""
        self.counts[name] -= 1
        if self.counts[name] <= 0:
            del self.counts[name]
        task = asyncio.get_running_loop().create_task(self._send_change(name, -1))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_change(self, name: str, change: int) -> None:
        async with self.lock:
            await self._change_and_count(name, change, count=False)

    async def _change_and_count(self, name: str, change: int, count: bool = True) -> int:
        """The streams of ``name`` over every process after this change; this process's own
        count when the broker cannot tell."""
        if not self.dirty:
            try:
                total = await get_broker().change_stream_owners(
                    self.key, name, change, self._ttl(), count=count
                )
            except Exception as exc:
                # Counted here only until the next refresh rewrites this process's report.
                self.dirty = True
                logger.warning("notify: could not count streams through the broker: %s", exc)
            else:
                if total is not None:
                    return total
        return self.counts[name]

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(notify_settings.PRESENCE_SECONDS)
            try:
                async with self.lock:
                    await get_broker().report_stream_owners(self.key, self.counts, self._ttl())
                    self.dirty = False
            except Exception as exc:  # retried at the next interval
                logger.debug("notify: could not report stream counts: %s", exc)

    def _ttl(self) -> float:
        return notify_settings.PRESENCE_SECONDS * 3


_counters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, StreamCounter] = (
    weakref.WeakKeyDictionary()
)


def get_counter() -> StreamCounter:
    """The stream counter of the running event loop."""
    loop = asyncio.get_running_loop()
    counter = _counters.get(loop)
    if counter is None:
        counter = _counters[loop] = StreamCounter()
    return counter


def refusal(name: str, limit: int) -> str:
    """The reason given to a client refused a stream over the limit of ``name``."""
    kind, _, _ = name.partition(":")
    setting = "MAX_STREAMS_PER_USER" if kind == "user" else "MAX_STREAMS_PER_IP"
    who = "this user" if kind == "user" else "this address"
    return (
        f"too many open streams for {who}: the limit is {limit} "
        f'(NOTIFY["{setting}"]); close one and retry'
    )
