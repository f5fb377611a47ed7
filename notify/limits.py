"""Limits on streams: how long one lasts, and how many one user or one address holds open.

A stream ends after ``MAX_STREAM_SECONDS`` (±10 %, so that clients connected together do not
all reconnect together); the client resumes from its cursor and misses nothing.

Open streams are counted per owner: ``user:<pk>`` for a logged-in user (when the stream
looked one up), else ``ip:<address>``. Each process counts its own streams, and one task per
process keeps the broker told: it writes the process's counts of the owners that changed
(absolute counts, so a lost or repeated write does no lasting harm) and reads, in the same
atomic step, what every other process reports for the owners that new streams wait for.
A new stream is counted here first, then waits for the write that carries it: two processes
admitting at the same moment may both refuse, but never both admit beyond the limit. The
whole record is written again every ``PRESENCE_SECONDS`` and, with Redis, expires after three
intervals, so that a process that dies stops counting.

No open waits for the broker longer than ``BROKER_TIMEOUT``, and none holds up another: a
broker that does not answer costs the opens of that moment this wait, then the process
counts on its own (as it does with the embedded broker) until a full report reaches the
broker again.
"""

from __future__ import annotations

import asyncio
import contextlib
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
# How long an open waits for the broker to count it, and a write to the broker may take, in
# seconds: past it the process counts on its own rather than hold streams back.
BROKER_TIMEOUT = 0.5


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
        # False while the broker does not answer (or shares no counts): opens then count on
        # this process's streams alone, without waiting, until a full report gets through.
        self.shared = True
        # What the next write carries: the owners whose count changed, those whose count in
        # other processes an open waits for, and the future those opens wait on.
        self._changed: set[str] = set()
        self._asked: set[str] = set()
        self._next: asyncio.Future[dict[str, int] | None] | None = None
        self._wake = asyncio.Event()
        # Numbers the writes, so that the broker can ignore one that arrives late.
        self._seq = 0
        self._writer = asyncio.get_running_loop().create_task(
            self._write(), name="notify-stream-counts"
        )

    async def acquire(self, name: str, limit: int) -> bool:
        """Count a new stream of ``name``; False (and nothing counted) when that would be
        more than ``limit`` streams over every process. A stream with no limit is not
        counted at all (``notify.admission``). Cancelled (its client left), it leaves
        nothing counted. Waits at most ``BROKER_TIMEOUT``."""
        self.counts[name] += 1
        # Its place among this process's streams of ``name``: of several opens that one write
        # carries, only those beyond the limit are refused.
        place = self.counts[name]
        self._changed.add(name)
        try:
            others = await self._elsewhere(name)
        except BaseException:
            self.release(name)
            raise
        if others + place > limit:
            self.release(name)
            return False
        return True

    def release(self, name: str) -> None:
        """Stop counting a stream of ``name``. Never waits: the writer tells the broker."""
        self.counts[name] -= 1
        if self.counts[name] <= 0:
            del self.counts[name]
        self._changed.add(name)
        self._wake.set()

    async def _elsewhere(self, name: str) -> int:
        """The streams of ``name`` in other processes, as the write that carries this
        process's latest count of it finds them; 0 when the broker cannot tell in time."""
        if not self.shared:
            return 0
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        written = self._next
        self._asked.add(name)
        self._wake.set()
        try:
            # Shielded: the write is shared with other opens, and a client that leaves
            # cancels only its own wait.
            async with asyncio.timeout(BROKER_TIMEOUT):
                others = await asyncio.shield(written)
        except TimeoutError:
            self._stop_sharing(f"no answer within {BROKER_TIMEOUT:g} s")
            return 0
        return 0 if others is None else others.get(name, 0)

    async def _write(self) -> None:
        """The one writer: changes as they come (batched while a write is on its way), and
        the whole record every ``PRESENCE_SECONDS``, and only that while not shared."""
        loop = asyncio.get_running_loop()
        report_at = loop.time()
        while True:
            if self.shared:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(report_at):
                        await self._wake.wait()
            else:
                await asyncio.sleep(report_at - loop.time())
            self._wake.clear()
            full = not self.shared or loop.time() >= report_at
            if not (full or self._changed):
                continue
            waiting, self._next = self._next, None
            asked, self._asked = list(self._asked), set()
            changed, self._changed = self._changed, set()
            counts = dict(self.counts) if full else {name: self.counts[name] for name in changed}
            others = await self._send(counts, full, asked)
            if full:
                report_at = loop.time() + notify_settings.PRESENCE_SECONDS
            if waiting is not None:
                waiting.set_result(others)

    async def _send(
        self, counts: Mapping[str, int], replace: bool, asked: list[str]
    ) -> dict[str, int] | None:
        self._seq += 1
        try:
            async with asyncio.timeout(BROKER_TIMEOUT):
                others = await get_broker().write_stream_owners(
                    self.key,
                    counts,
                    notify_settings.PRESENCE_SECONDS * 3,
                    seq=self._seq,
                    replace=replace,
                    others_of=asked,
                )
        except TimeoutError:
            # What this write carried goes in the next full report, as the next write.
            self._stop_sharing(f"no answer within {BROKER_TIMEOUT:g} s")
            return None
        except Exception as exc:
            self._stop_sharing(repr(exc))
            return None
        if others is None:
            self.shared = False  # the embedded broker: this process's count is the count
        elif not self.shared:
            self.shared = True
            logger.warning("notify: counting streams through the broker again")
        return others

    def _stop_sharing(self, reason: str) -> None:
        if self.shared:
            self.shared = False
            logger.warning(
                "notify: could not count streams through the broker (%s); counting this "
                "process's streams alone until it answers",
                reason,
            )


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
