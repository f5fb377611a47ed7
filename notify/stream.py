"""One event stream: replay what the client missed since its cursor, then tail live events.

Transport-agnostic: ``EventStream.body()`` yields what to write, as its ``notify.wire``
makes it: SSE bytes that ``notify.asgi`` and ``notify.views`` write to an HTTP response, or
the text messages that ``notify.consumers`` sends over a WebSocket.

The seam between replay and live is exact because the stream registers with the hub
*before* it queries the database: every event committed after the query reaches the
subscriber's buffer. Events the replay already sent (id ≤ the last replayed id) are dropped
when the stream goes live, and so are their notices if they reach the hub only later.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, Generic, overload

from django.core.exceptions import ValidationError

from notify import history, metrics, shutdown, sse
from notify.broker import Notice
from notify.conf import notify_settings
from notify.db import db_call
from notify.history import id_bounds, replay
from notify.hub import Subscriber
from notify.validation import parse_cursor, validate_channel
from notify.wire import SSE, Chunk, Wire

DEFAULT_CHANNEL = "broadcast"
CONTENT_TYPE = "text/event-stream; charset=utf-8"
# Headers of every stream response. X-Accel-Buffering tells nginx not to buffer.
HEADERS = (
    ("Content-Type", CONTENT_TYPE),
    ("Cache-Control", "no-store"),
    ("X-Accel-Buffering", "no"),
)


@dataclass(frozen=True)
class StreamRequest:
    channels: tuple[str, ...]
    #: The raw cursor (``Last-Event-ID`` header, else ``lastEventId``), None when absent.
    cursor: str | None


def parse_channels(values: Iterable[str]) -> tuple[str, ...]:
    """The channels named by the ``channel`` parameters of a request, checked: each valid,
    none repeated, at most ``MAX_CHANNELS``; ``("broadcast",)`` when none is named.
    Raises ValidationError. The stream and the history API read channels alike."""
    values = list(values)
    limit = notify_settings.MAX_CHANNELS
    # Counted before anything else, so that a request naming thousands of channels costs
    # no more than one naming a few.
    if len(values) > limit:
        raise ValidationError(
            f'{len(values)} channels requested; the limit is {limit} (NOTIFY["MAX_CHANNELS"])',
            code="too_many",
        )
    channels: dict[str, None] = {}  # ordered, with O(1) lookups
    for value in values:
        channel = validate_channel(value)
        if channel in channels:
            raise ValidationError(f'channel "{channel}" is given twice', code="repeated")
        channels[channel] = None
    return tuple(channels) or (DEFAULT_CHANNEL,)


def parse_stream_request(
    params: Iterable[tuple[str, str]], last_event_id: str | None
) -> StreamRequest:
    """Read the channels and the cursor of a stream request. Raises ValidationError."""
    channels: list[str] = []
    query_cursor: str | None = None
    for name, value in params:
        if name == "channel":
            channels.append(value)
        elif name == "lastEventId":
            query_cursor = value
    # An empty Last-Event-ID is what a client sends before it has seen an id: no cursor.
    cursor = last_event_id or query_cursor or None
    return StreamRequest(parse_channels(channels), cursor)


def first_frame(retry_ms: int, cursor: str | None) -> bytes:
    """A stream's first bytes: ``retry:``, with the request's cursor as ``id:`` when it is
    a valid one (see ``sse.retry_frame``)."""
    return sse.retry_frame(retry_ms, None if cursor is None else parse_cursor(cursor))


class EventStream(Generic[Chunk]):
    """One stream, written by ``wire`` (SSE bytes unless told otherwise)."""

    @overload
    def __init__(
        self: EventStream[bytes],
        subscriber: Subscriber,
        cursor: str | None,
        lifetime: float | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self,
        subscriber: Subscriber,
        cursor: str | None,
        lifetime: float | None,
        wire: Wire[Chunk],
    ) -> None: ...

    def __init__(
        self,
        subscriber: Subscriber,
        cursor: str | None,
        lifetime: float | None = None,
        wire: Wire[Any] = SSE,
    ) -> None:
        self.subscriber = subscriber
        self.cursor = cursor
        #: Seconds after which the stream ends (its client then resumes); None: never.
        self.lifetime = lifetime
        self.wire = wire
        # The id the client has everything up to, for the stream's channels.
        self.position = 0
        self.replayed = 0

    async def body(self) -> AsyncIterator[Chunk]:
        """The stream after its first bytes (``retry:``), until the stream is closed or its
        lifetime is over. Ending closes the subscriber: what it buffered and did not send
        is read again from the database by the client's next stream. A stream closed for a
        shutdown ends with a ``retry:`` of a random short delay (``notify.shutdown``)."""
        timer = None
        if self.lifetime is not None:
            timer = asyncio.get_running_loop().call_later(
                self.lifetime, self.subscriber.close, "lifetime"
            )
        try:
            async for chunk in self._body():
                yield chunk
        finally:
            if timer is not None:
                timer.cancel()
        if self.subscriber.closed == "shutdown":
            yield self.wire.retry(shutdown.reconnect_delay())

    async def _body(self) -> AsyncIterator[Chunk]:
        wire = self.wire
        subscriber = self.subscriber
        batch = notify_settings.REPLAY_BATCH
        cursor = None if self.cursor is None else parse_cursor(self.cursor)
        first: list[Notice] = []
        oldest: int | None = None
        newest: int | None
        if self.cursor is None and subscriber.origin is not None:
            # No database: the hub brings every event after the id it had reached when the
            # stream subscribed (1k streams opened at once are 1k queries fewer).
            newest = subscriber.origin
        elif cursor is None:
            oldest, newest = await db_call(id_bounds)
        else:
            # Live events that overflow from now on are in this read, or the next one.
            subscriber.lost = False
            # One thread-pool call (and, with CONN_MAX_AGE=0, one connection): the bounds
            # and the first batch of the replay together.
            until = self._replay_until()
            if until is None:
                return
            oldest, newest, first = await db_call(
                history.start, subscriber.channels, cursor, batch, until
            )
        if subscriber.closed:
            # Revoked (or closed otherwise) while the database was read: what was read may
            # no longer be this client's to see.
            return
        newest = newest or 0
        if self.cursor is None:
            self.position = newest
            yield wire.open(newest)
        elif cursor is None or cursor > newest:
            reason = "invalid-cursor" if cursor is None else "unknown-cursor"
            metrics.RESETS.labels(reason=reason).inc()
            self.position = newest
            yield wire.reset(reason, oldest, newest)
        else:
            self.position = cursor
            if oldest is not None and cursor + 1 < oldest:
                # Retention deleted events after the cursor; replay what is left (the first
                # batch holds ids above the cursor: those are above oldest - 1 as well).
                yield self._history_gone(oldest)
            metrics.REPLAYS.inc()
            yield wire.catchup_start(self.position)
            if first:
                self.position = first[-1].id
                self._count_replayed(len(first))
                yield wire.events(first)
            if len(first) == batch or subscriber.lost:
                async for chunk in self._from_database():
                    yield chunk
            yield wire.catchup_end(self.replayed, self.position)
        if subscriber.lost:
            # Live events overflowed the buffer before the stream went live.
            async for chunk in self._from_database():
                yield chunk
        async for chunk in self._live():
            yield chunk

    async def _from_database(self) -> AsyncIterator[Chunk]:
        """Events after ``position`` from the database, until the live buffer holds the rest.
        Retention may run between two batches (or since the stream's first read): each batch
        comes with the oldest stored id, and ids after ``position`` found gone are reported
        (``history-gone``) before what is left."""
        subscriber = self.subscriber
        batch = notify_settings.REPLAY_BATCH
        while True:
            # Under a server that never blocks a write (daphne), a client that stops reading
            # during a long replay would otherwise have all of it buffered by the server.
            await subscriber.writable()
            if subscriber.closed:
                return
            subscriber.lost = False
            until = self._replay_until()
            if until is None:
                return
            oldest, rows = await db_call(replay, subscriber.channels, self.position, batch, until)
            if subscriber.closed:
                return
            if oldest is not None and self.position + 1 < oldest:
                yield self._history_gone(oldest)
            if rows:
                self.position = rows[-1].id
                self._count_replayed(len(rows))
                yield self.wire.events(rows)
            if len(rows) < batch and not subscriber.lost:
                return

    def _replay_until(self) -> int | None:
        """The highest id a replay may read: the hub's position (None once the stream has
        left the hub).

        Why not the newest stored id: the hub acts on revocations in id order as it delivers
        (``notify.control``). An event above its position may come after a revocation it has
        not met yet, which would close this stream; read from the database now, that event
        would be sent first. The hub delivers everything above its position to this stream
        anyway (it subscribed before reading), and the seam drops what the replay sent."""
        hub = self.subscriber.hub
        return None if hub is None else hub.last_id

    def _history_gone(self, oldest: int) -> Chunk:
        """The reset that tells the client the events after its position and before
        ``oldest`` are gone; its position moves to just before ``oldest``."""
        self.position = oldest - 1
        metrics.RESETS.labels(reason="history-gone").inc()
        return self.wire.reset("history-gone", oldest, self.position)

    def _count_replayed(self, count: int) -> None:
        """Note ``count`` events sent from the database (a batch: not one call per event)."""
        self.replayed += count
        metrics.EVENTS_REPLAYED.inc(count)

    async def _live(self) -> AsyncIterator[Chunk]:
        subscriber = self.subscriber
        subscriber.go_live(self.position)
        wire = self.wire
        loop = asyncio.get_running_loop()
        while True:
            await subscriber.wait()
            if subscriber.closed:
                return
            subscriber.heartbeat_due = False
            if subscriber.frames:
                data = wire.events(subscriber.take())
            elif wire.heartbeat is not None:
                data = wire.heartbeat
            else:
                # This transport keeps an idle connection alive by itself.
                subscriber.last_write = loop.time()
                continue
            subscriber.sending = True
            yield data
            subscriber.sending = False
            subscriber.last_write = loop.time()
