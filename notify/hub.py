"""The per-process fan-out: one broker subscription, shared by every stream of the process.

The hub turns the broker's notices into one ordered sequence of events: every id once, in
increasing order, with no gaps that the database could fill. Each event's bytes are built
once (by the publisher) and the same bytes object is handed to every stream that wants it.

Ordering: publishers commit in id order (see ``notify.api``), so when the hub sees id N
arrive while it has delivered only up to M < N-1, every event between M and N is already
in the database (or was rolled back). The hub waits ``GAP_WAIT_SECONDS`` for the missing
notices, then reads the gap from the database: one query per process, not per stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterable

from notify import metrics
from notify.broker import Broker, Notice, Resync, decode_notice, get_broker
from notify.conf import notify_settings
from notify.control import REVOCATION, revoked
from notify.db import db_call
from notify.history import events_after, id_bounds
from notify.sse import created_timestamp

logger = logging.getLogger("notify.hub")

# A hub that cannot read its starting position in this long answers streams with 503.
READY_TIMEOUT = 10.0
# Notices held while waiting for a missing id; beyond this the gap is read at once.
MAX_PENDING = 1000
# Notices handled between two chances for the streams to run.
YIELD_EVERY = 64
# How long the streams cancelled at the end of a drain get to unwind.
CANCELLED_WAIT = 1.0


class HubUnavailable(Exception):
    """The hub could not learn the newest id (the database is unreachable)."""


class Subscriber:
    """One stream's view of the hub: a bounded buffer of events and a way to wait for it."""

    __slots__ = (
        "channels",
        "closed",
        "floor",
        "frames",
        "heartbeat_due",
        "hub",
        "last_write",
        "lost",
        "origin",
        "paused",
        "replaying",
        "sending",
        "session",
        "task",
        "user_id",
        "waiter",
    )

    def __init__(
        self,
        channels: tuple[str, ...],
        now: float,
        user_id: str | None = None,
        session: str | None = None,
    ) -> None:
        self.channels = channels
        # The pk of the stream's user, by which ``notify.revoke`` finds it (None: nobody's),
        # and the digest of the session it was let in by (a logout ends that session only).
        self.user_id = user_id
        self.session = session
        # A list, not a deque: an empty deque holds a block of 64 slots (about 600 bytes per
        # idle stream), and the buffer is only ever appended to and taken whole.
        self.frames: list[Notice] = []
        self.waiter: asyncio.Future[None] | None = None
        # While replaying from the database, an overflowing buffer is emptied (``lost``) and
        # the stream reads the database again; once live, an overflow closes the stream.
        self.replaying = True
        self.lost = False
        # Ids at or below this were sent from the database: their notices may still arrive.
        self.floor = 0
        # The hub's newest delivered id when this subscriber registered, if the hub was
        # current then (set by ``Hub.subscribe``): every event after it reaches the
        # subscriber, so a stream without a cursor starts there without asking the database.
        self.origin: int | None = None
        self.closed: str | None = None
        self.heartbeat_due = False
        # Set while the server's write buffer for this client is full (see
        # notify.backpressure): the stream writes nothing, so live events wait in ``frames``
        # (bounded by MAX_BUFFER) instead of in the server's unbounded buffer.
        self.paused = False
        self.last_write = now
        self.sending = False
        self.task: asyncio.Task[object] | None = asyncio.current_task()
        # The hub this subscriber is registered in (set by ``Hub.attach``).
        self.hub: Hub | None = None

    def push(self, notice: Notice, limit: int) -> None:
        if self.closed or notice.id <= self.floor:
            return
        if len(self.frames) >= limit:
            if self.replaying:
                self.frames.clear()
                self.lost = True
            else:
                self.close("too-slow")
            return
        self.frames.append(notice)
        self._wake()

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = reason
        if reason == "too-slow":
            metrics.SLOW_CLIENT_DISCONNECTS.inc()
        self.frames.clear()
        self._wake()
        if self.sending and reason == "too-slow" and self.task is not None:
            # The server is blocking the stream's write (the client stopped reading): the
            # wake-up alone would never be seen.
            self.task.cancel()

    def go_live(self, after: int) -> None:
        """Leave replay: drop events the replay already sent (ids ≤ ``after``), both those
        buffered now and those whose notices are still on their way to the hub."""
        self.floor = after
        frames = self.frames
        if frames and frames[0].id <= after:
            self.frames = [notice for notice in frames if notice.id > after]
        self.replaying = False

    def take(self) -> list[Notice]:
        """Everything buffered, for one write."""
        notices = self.frames
        self.frames = []
        return notices

    def pause(self) -> None:
        """The client's connection takes no more writes for now."""
        self.paused = True

    def resume(self) -> None:
        """The client's connection takes writes again."""
        self.paused = False
        self._wake()

    async def wait(self) -> None:
        """Until there is something to write (and the connection takes writes), a heartbeat
        is due (ditto), or the stream is closed."""
        while not self.closed and (self.paused or not (self.frames or self.heartbeat_due)):
            await self._sleep()

    async def writable(self) -> None:
        """Until the connection takes writes, or the stream is closed."""
        while self.paused and not self.closed:
            await self._sleep()

    async def _sleep(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self.waiter = waiter
        try:
            await waiter
        finally:
            self.waiter = None

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _task_done(self, task: asyncio.Task[object]) -> None:
        # The hub's safety net: whatever way the stream's task ended, it reads no more.
        hub = self.hub
        if hub is not None:
            hub.unsubscribe(self)


class Ticket:
    """A stream being let in, taken before anything looks up its user: a revocation that
    reaches the hub before the stream has joined the hub's index of users is noted here,
    and ``Hub.attach`` closes the stream as it joins (see ``Hub.revoke``). Close it once
    the stream has joined, or has been refused."""

    __slots__ = ("hub", "revoked", "revoked_sessions", "void")

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        # The users and sessions revoked since the ticket was taken (None: none yet).
        self.revoked: set[str] | None = None
        self.revoked_sessions: set[str] | None = None
        # Set when whatever came since cannot be known: the reason the stream ends with.
        self.void: str | None = None

    def close(self) -> None:
        self.hub.tickets.discard(self)

    def _note(self, users: list[str], sessions: list[str]) -> None:
        if users:
            if self.revoked is None:
                self.revoked = set()
            self.revoked.update(users)
        if sessions:
            if self.revoked_sessions is None:
                self.revoked_sessions = set()
            self.revoked_sessions.update(sessions)

    def covers(self, user_id: str | None, session: str | None) -> bool:
        """Whether a revocation noted here ends a stream of ``user_id`` let in by
        ``session``."""
        return (user_id is not None and self.revoked is not None and user_id in self.revoked) or (
            session is not None
            and self.revoked_sessions is not None
            and session in self.revoked_sessions
        )


def cancelled_by_hub(subscriber: Subscriber) -> bool:
    """For a stream's ``except asyncio.CancelledError``: whether the hub cancelled the
    stream's task (a write its client was not reading, closed as too slow, or still blocked
    when a shutdown's drain ran out of time). If so, the cancellation is taken back, and the
    caller ends this stream only; if not, it re-raises."""
    if subscriber.closed not in ("too-slow", "shutdown"):
        return False
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    return True


class Hub:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.loop = asyncio.get_running_loop()
        self.by_channel: dict[str, set[Subscriber]] = {}
        self.subscribers: set[Subscriber] = set()
        self.by_user: dict[str, set[Subscriber]] = {}
        self.by_session: dict[str, set[Subscriber]] = {}
        # Streams being let in (see ``Ticket``).
        self.tickets: set[Ticket] = set()
        # Set by ``close()``: a stream that joins from then on ends at once.
        self.closed = False
        # The highest id delivered; None until the starting position is read.
        self.last_id: int | None = None
        self.pending: dict[int, Notice] = {}
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self._fill_lock = asyncio.Lock()
        self._gap_timer: asyncio.TimerHandle | None = None
        self._gap_task: asyncio.Task[None] | None = None
        # Names this hub's presence report (one per process and event loop).
        self.presence_key = uuid.uuid4().hex
        # Set by ``drain()``: the process is shutting down, streams are ending.
        self.draining = False
        # Broker subscriptions established (RESYNCs seen): each after the first is a
        # reconnect, and a subscription found down is a fallback to polling once per
        # subscription, however briefly it was up.
        self._subscriptions = 0
        # Whether what was published before the current subscription has been read.
        self._synced = False
        self._emptied = asyncio.Event()
        self._tasks = [
            self.loop.create_task(self._supervise(self._start), name="notify-hub-start"),
            self.loop.create_task(self._supervise(self._listen), name="notify-hub-listen"),
            self.loop.create_task(self._supervise(self._heartbeat), name="notify-hub-heartbeat"),
            self.loop.create_task(self._supervise(self._watch_database), name="notify-hub-poll"),
            self.loop.create_task(self._supervise(self._report_presence), name="notify-presence"),
        ]

    # -- streams ---------------------------------------------------------------------------

    async def until_ready(self) -> None:
        """Return once the hub knows where it starts (the newest id when it started); raise
        ``HubUnavailable`` if that takes over ``READY_TIMEOUT`` (the database is down)."""
        if self.ready.done():
            return
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the result, and
            # drops a cancellation (the client left) that lands as ``ready`` completes; the
            # stream would then go on for a client that is gone.
            async with asyncio.timeout(READY_TIMEOUT):
                await asyncio.shield(self.ready)
        except TimeoutError as exc:
            raise HubUnavailable("the database could not be read") from exc

    def ticket(self) -> Ticket:
        """A ticket for a stream about to be let in; take it after ``until_ready()``, before
        looking up the stream's user. Revocations stored after that, whose place in the
        event log is then above the hub's starting id, all reach it."""
        ticket = Ticket(self)
        self.tickets.add(ticket)
        return ticket

    async def subscribe(
        self,
        channels: Iterable[str],
        user_id: str | None = None,
        ticket: Ticket | None = None,
        session: str | None = None,
    ) -> Subscriber:
        """``attach``, once the hub is ready (raises ``HubUnavailable``)."""
        await self.until_ready()
        return self.attach(channels, user_id, ticket, session)

    def attach(
        self,
        channels: Iterable[str],
        user_id: str | None = None,
        ticket: Ticket | None = None,
        session: str | None = None,
    ) -> Subscriber:
        """Register for live events; the hub must be ready. Call before querying for the
        replay. ``user_id`` (the pk of the stream's user) and ``session`` (the digest of the
        session that let it in) let ``revoke`` close the stream; ``ticket``, taken before
        that user was looked up, closes it at once if either was revoked since. The
        subscriber is dropped when the calling task ends, whatever the stream's own clean-up
        does."""
        subscriber = Subscriber(tuple(channels), self.loop.time(), user_id, session)
        subscriber.hub = self
        if self.current():
            subscriber.origin = self.last_id
        for channel in subscriber.channels:
            self.by_channel.setdefault(channel, set()).add(subscriber)
        self.subscribers.add(subscriber)
        self._emptied.clear()
        if user_id is not None:
            self.by_user.setdefault(user_id, set()).add(subscriber)
        if session is not None:
            self.by_session.setdefault(session, set()).add(subscriber)
        if ticket is not None:
            ticket.close()
            if ticket.void is not None:
                subscriber.close(ticket.void)
            elif ticket.hub is not self or ticket.covers(user_id, session):
                # Authorized before a revocation of its user reached the hub (or by a hub
                # that has since been replaced, whose revocations this one never saw).
                subscriber.close("revoked")
        if self.closed:
            subscriber.close("hub-closed")
        elif self.draining:
            # It passed the check for draining before the drain began: it ends at once.
            subscriber.close("shutdown")
        if subscriber.task is not None:
            subscriber.task.add_done_callback(subscriber._task_done)
        return subscriber

    def current(self) -> bool:
        """Whether ``last_id`` is the newest committed id, give or take notices in flight:
        the broker's subscription is up and what came before it was read. Not so while a
        subscription starts or is down, nor with a broker that polls (notices of other
        processes then come only every POLL_SECONDS)."""
        broker = self.broker
        return self._synced and broker.connected and not broker.polls

    def unsubscribe(self, subscriber: Subscriber) -> None:
        subscriber.close("unsubscribed")
        if subscriber.hub is None:
            return  # unsubscribed already
        subscriber.hub = None
        if subscriber.task is not None:
            subscriber.task.remove_done_callback(subscriber._task_done)
        self.subscribers.discard(subscriber)
        if not self.subscribers:
            self._emptied.set()
        for channel in subscriber.channels:
            streams = self.by_channel.get(channel)
            if streams is not None:
                streams.discard(subscriber)
                if not streams:
                    del self.by_channel[channel]
        for index, key in (
            (self.by_user, subscriber.user_id),
            (self.by_session, subscriber.session),
        ):
            if key is not None:
                streams = index.get(key)
                if streams is not None:
                    streams.discard(subscriber)
                    if not streams:
                        del index[key]

    def revoke(self, users: Iterable[str], sessions: Iterable[str] = ()) -> None:
        """Close this hub's streams of the users whose pks are ``users`` and those let in by
        ``sessions`` (digests), with the reason ``"revoked"``, and those being let in
        (``Ticket``); their clients reconnect and are authorized again. ``notify.revoke``
        stores the revocation in the event log, and every hub of every process meets it
        there, in id order (``_deliver``)."""
        users, sessions = list(users), list(sessions)
        for index, keys in ((self.by_user, users), (self.by_session, sessions)):
            for key in keys:
                for subscriber in list(index.get(key, ())):
                    subscriber.close("revoked")
        for ticket in self.tickets:
            ticket._note(users, sessions)

    async def drain(self, grace: float) -> None:
        """End every stream, for a shutdown (see ``notify.shutdown``). Open streams are
        closed with the reason ``"shutdown"`` (they end their response with a last
        ``retry:``), and so are streams that subscribe from now on. Returns once none is
        left, or after ``grace`` seconds: the streams still open then (their server blocked
        in a write to a client that does not read) have their task cancelled."""
        self.draining = True
        for subscriber in list(self.subscribers):
            subscriber.close("shutdown")
        if await self._until_empty(grace):
            return
        logger.warning(
            "notify: %d streams still open %s s into the shutdown (their clients do not "
            "read); cancelling them",
            len(self.subscribers),
            grace,
        )
        for subscriber in list(self.subscribers):
            if subscriber.task is not None:
                subscriber.task.cancel()
        await self._until_empty(CANCELLED_WAIT)

    async def _until_empty(self, seconds: float) -> bool:
        """Whether every stream unsubscribed within ``seconds``."""
        if not self.subscribers:
            return True
        try:
            async with asyncio.timeout(seconds):
                await self._emptied.wait()
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Stop the hub (settings changed); its streams end and their clients reconnect."""
        self.closed = True
        for task in self._tasks:
            task.cancel()
        if self._gap_task is not None:
            self._gap_task.cancel()
        if self._gap_timer is not None:
            self._gap_timer.cancel()
        for subscriber in list(self.subscribers):
            subscriber.close("hub-closed")

    # -- ordering --------------------------------------------------------------------------

    def _on_notice(self, notice: Notice) -> None:
        last_id = self.last_id
        if last_id is None or notice.id <= last_id:
            return  # delivered already (through the database or an earlier notice)
        if notice.id == last_id + 1 and not self.pending:
            self._deliver(notice)
            return
        self.pending[notice.id] = notice
        self._drain_pending()
        if self.pending:
            self._schedule_gap_fill(immediately=len(self.pending) >= MAX_PENDING)

    def _drain_pending(self) -> None:
        pending = self.pending
        while pending and self.last_id is not None:
            notice = pending.pop(self.last_id + 1, None)
            if notice is None:
                break
            self._deliver(notice)

    def _deliver(self, notice: Notice) -> None:
        self.last_id = notice.id
        streams = self.by_channel.get(notice.channel)
        if streams:
            limit = notify_settings.MAX_BUFFER
            for subscriber in streams:
                subscriber.push(notice, limit)
            # Measured once per event, never per stream: this loop is the hot path.
            metrics.EVENTS_DELIVERED.inc(len(streams))
            created = created_timestamp(notice.frame)
            if created is not None:
                # The publisher's clock against this one's: a negative figure is clock skew.
                metrics.DELIVERY_LATENCY.observe(max(0.0, time.time() - created))
        elif notice.channel == REVOCATION:
            # No stream reads this channel (it is reserved), so checking for it here costs
            # the events that have streams nothing. It is acted on at its place in id
            # order: no event after it reaches a stream it revokes.
            try:
                users, sessions = revoked(notice.message)
            except ValueError:
                logger.warning("notify: ignoring a malformed revocation #%d", notice.id)
            else:
                self.revoke(users, sessions)

    def _schedule_gap_fill(self, immediately: bool = False) -> None:
        if self._gap_task is not None and not self._gap_task.done():
            return
        if immediately or notify_settings.GAP_WAIT_SECONDS <= 0:
            if self._gap_timer is not None:
                self._gap_timer.cancel()
                self._gap_timer = None
            self._gap_task = self.loop.create_task(self._fill_gap())
        elif self._gap_timer is None:
            self._gap_timer = self.loop.call_later(
                notify_settings.GAP_WAIT_SECONDS, self._schedule_gap_fill, True
            )

    async def _fill_gap(self) -> None:
        while self.pending:
            try:
                await self.fill(until=max(self.pending))
            except Exception:
                logger.exception("notify: could not read a gap from the database; retrying")
                await asyncio.sleep(1.0)

    async def fill(self, until: int | None = None) -> None:
        """Deliver from the database what the broker did not bring: ids after ``last_id``,
        up to ``until`` (an id known to be committed) or to the newest stored.

        Ids after ``last_id`` that retention deleted before they were read here cannot be
        delivered: see ``_lost_to_retention``."""
        async with self._fill_lock:
            if self.last_id is None:
                # Not started: nothing after the id ``_start`` reads can be owed to a stream
                # before it is read. (A check, not an assert: ``python -O`` strips those.)
                return
            batch = notify_settings.REPLAY_BATCH
            while True:
                start = self.last_id
                oldest, rows = await db_call(events_after, start, batch, until)
                # Notices may have advanced last_id during the read, consecutively: every id
                # up to it was delivered, and only the ids between it and the oldest are gone.
                # At 0 the hub found nothing stored when it started and has delivered nothing:
                # it cannot tell ids deleted since from ids deleted before (a table emptied by
                # hand or by a test, a first publish rolled back), which nobody was owed.
                if oldest is not None and self.last_id > 0 and oldest > self.last_id + 1:
                    self._lost_to_retention()
                for count, notice in enumerate(rows, 1):
                    # Notices may advance last_id meanwhile: only ever consecutively, so
                    # skipping ids at or below it skips nothing unseen.
                    if notice.id > self.last_id:
                        self._deliver(notice)
                    if count % YIELD_EVERY == 0:
                        await asyncio.sleep(0)
                if len(rows) < batch:
                    break
            if until is not None and until > self.last_id:
                # Ids up to ``until`` that the database does not have were rolled back (or
                # deleted, which the streams were told of above).
                self.last_id = until
            for stale in [key for key in self.pending if key <= self.last_id]:
                del self.pending[stale]
            self._drain_pending()

    def _lost_to_retention(self) -> None:
        """Ids after ``last_id`` were deleted by retention before the hub read them, and
        which channels they were on is gone with them; one may even have been a revocation.
        So every stream ends (``"history-gone"``), those being let in too: each client
        resumes from its cursor, below the oldest stored id, is authorized again, and its
        stream's start reports ``history-gone``. (A stream's replay never reads past
        ``last_id``, so none of them has anything past the gap from the database.)"""
        for subscriber in list(self.subscribers):
            subscriber.close("history-gone")
        for ticket in self.tickets:
            ticket.void = "history-gone"

    # -- background tasks ------------------------------------------------------------------

    async def _supervise(self, run: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("notify: hub task %s failed; restarting", run.__name__)
                await asyncio.sleep(1.0)

    async def _start(self) -> None:
        """Learn the newest id: the hub delivers what comes after it. This does not wait for
        the broker, so streams open (and the database is watched) while Redis is down."""
        _, newest = await db_call(id_bounds)
        self.last_id = newest or 0
        self.ready.set_result(None)

    async def _listen(self) -> None:
        handled = 0
        async for item in self.broker.subscribe():
            handled += 1
            if handled % YIELD_EVERY == 0:
                # A burst may be read from the socket without ever suspending: let the
                # streams write what they have before more piles up in their buffers.
                await asyncio.sleep(0)
            if isinstance(item, Resync):
                if self._subscriptions:
                    metrics.BROKER_RECONNECTS.inc()
                self._subscriptions += 1
                # Subscribed (again): what was published before is read from the database.
                self._synced = False
                await asyncio.shield(self.ready)
                await self.fill()
                self._synced = True
                continue
            try:
                notice = decode_notice(item)
            except ValueError:
                logger.warning("notify: ignoring a malformed broker message %r", item[:80])
                continue
            self._on_notice(notice)

    async def _watch_database(self) -> None:
        """Look for new ids when the broker cannot bring other processes' events, and now
        and then when it can: a publisher that could not reach Redis (or skipped it, just
        after a failure) leaves an event without a notice while this subscription is up,
        and no later notice may come to reveal the gap."""
        loop = self.loop
        reconciled = loop.time()
        # The subscription whose loss was counted (-1: none yet).
        lost = -1
        while True:
            await asyncio.sleep(notify_settings.POLL_SECONDS)
            if self.last_id is None:
                continue
            # A broker that polls by design (the embedded one) never falls back.
            subscription_down = not self.broker.polls and not self.broker.connected
            if subscription_down and lost != self._subscriptions:
                lost = self._subscriptions
                metrics.POLLING_FALLBACKS.inc()
            watching = self.broker.polls or subscription_down
            if watching or loop.time() - reconciled >= notify_settings.RECONCILE_SECONDS:
                await self.fill()
                reconciled = loop.time()

    async def _report_presence(self) -> None:
        """Tell the broker how many streams this hub has per channel, now and then."""
        reported: dict[str, int] = {}
        while True:
            interval = notify_settings.PRESENCE_SECONDS
            counts = {channel: len(streams) for channel, streams in self.by_channel.items()}
            if counts or reported:
                try:
                    await self.broker.report_presence(self.presence_key, counts, ttl=interval * 3)
                    reported = counts
                except Exception as exc:  # presence is informative: never stop for it
                    logger.debug("notify: could not report presence: %s", exc)
            await asyncio.sleep(interval)

    async def _heartbeat(self) -> None:
        interval = notify_settings.HEARTBEAT_SECONDS
        while True:
            await asyncio.sleep(interval / 3)
            cutoff = self.loop.time() - interval
            for subscriber in self.subscribers:
                if not subscriber.replaying and subscriber.last_write <= cutoff:
                    subscriber.heartbeat_due = True
                    subscriber._wake()


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def get_hub() -> Hub:
    """The hub of the running event loop, started on first use."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = Hub(get_broker())
    return hub


def open_streams() -> int:
    """Streams open now in this process, over its hubs (one per event loop; a server has
    one). Callable from any thread."""
    while True:
        try:
            hubs = list(_hubs.values())
        except RuntimeError:  # a hub was started on another thread meanwhile: read again
            continue
        return sum(len(hub.subscribers) for hub in hubs)


def running_hub() -> Hub | None:
    """The hub of the running event loop if it was started; None (and none started) if not."""
    return _hubs.get(asyncio.get_running_loop())


def reset_hubs() -> None:
    """Stop every hub (on ``setting_changed``); the next stream starts a fresh one."""
    for loop, hub in list(_hubs.items()):
        del _hubs[loop]
        with contextlib.suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(hub.close)
