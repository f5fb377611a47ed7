"""The embedded broker: no Redis. Notices reach the streams of the publishing process at once;
other processes find new events by watching the database (``polls``)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence

from notify.broker.base import RESYNC, Broker, Resync

Item = bytes | Resync

# Notices waiting for the hub; beyond this the hub re-reads from the database instead.
QUEUE_SIZE = 10_000


class LocalBroker(Broker):
    polls = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[Item]]] = []
        # Presence of this process's hubs (one per event loop): key -> (counts, expires at).
        self._presence: dict[str, tuple[dict[str, int], float]] = {}

    async def report_presence(self, key: str, counts: Mapping[str, int], ttl: float) -> None:
        with self._lock:
            self._presence[key] = (dict(counts), time.monotonic() + ttl)

    def stream_counts(self, channels: Sequence[str]) -> dict[str, int] | None:
        """The streams of this process: the embedded broker serves one process."""
        now = time.monotonic()
        with self._lock:
            for key in [key for key, (_, expires) in self._presence.items() if expires <= now]:
                del self._presence[key]
            reports = [counts for counts, _ in self._presence.values()]
        return {channel: sum(counts.get(channel, 0) for counts in reports) for channel in channels}

    def publish(self, notice: bytes) -> None:
        self._send(notice)

    def _send(self, item: Item) -> None:
        with self._lock:
            targets = list(self._queues)
        for loop, queue in targets:
            try:
                loop.call_soon_threadsafe(_offer, queue, item)
            except RuntimeError:  # that loop is closed
                pass

    async def subscribe(self) -> AsyncIterator[Item]:
        entry = (asyncio.get_running_loop(), asyncio.Queue[Item](QUEUE_SIZE))
        with self._lock:
            self._queues.append(entry)
        try:
            yield RESYNC
            while True:
                yield await entry[1].get()
        finally:
            with self._lock:
                self._queues.remove(entry)


def _offer(queue: asyncio.Queue[Item], item: Item) -> None:
    try:
        queue.put_nowait(item)
    except asyncio.QueueFull:
        # The hub is far behind: drop what waits and let it read the database instead.
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(RESYNC)
