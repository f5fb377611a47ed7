"""notify.hub (the per-process fan-out) and notify.stream.EventStream (replay, then live).

A real Hub runs in an asyncio loop with the real LocalBroker and the real database. Some
notices are built by hand and fed to ``hub._on_notice`` so that the tests choose which
notices reach the hub, and in which order.
"""

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from django.db import connection, transaction
from django.test import override_settings

from notify import retention, sse
from notify.api import publish
from notify.broker import Notice, decode_notice, encode_notice, get_broker
from notify.broker.local import LocalBroker
from notify.conf import Retention
from notify.db import db_call
from notify.history import id_bounds
from notify.hub import Hub, Subscriber
from notify.models import Event
from notify.stream import EventStream

pytestmark = pytest.mark.django_db(transaction=True)

GAP_WAIT = 0.3


@pytest.fixture(autouse=True)
def hub_settings(settings):
    """The embedded broker, no database polling (so only notices and gaps move the hub)."""
    with override_settings(
        NOTIFY={
            **settings.NOTIFY,
            "BROKER": "notify.broker.local.LocalBroker",
            "POLL_SECONDS": 60,
            "GAP_WAIT_SECONDS": GAP_WAIT,
            "HEARTBEAT_SECONDS": 60,
        }
    ):
        yield


def with_notify(**changes: Any):
    from django.conf import settings

    return override_settings(NOTIFY={**settings.NOTIFY, **changes})


def run_with_hub(body: Callable[[Hub], Awaitable[Any]], warm_up: bool = True) -> Any:
    """Run ``body(hub)`` in a fresh event loop with a started hub.

    ``warm_up`` stores an event first, so that the hub starts at the id just before the next
    one (a flushed test database does not restart its ids at 1).
    """
    if warm_up:
        _store("warm-up", None)

    async def main() -> Any:
        broker = get_broker()
        assert isinstance(broker, LocalBroker)
        hub = Hub(broker)
        # On subscribing, the hub reads from the database what it may have missed: let that
        # first read finish, so that each test alone decides what reaches the hub and when.
        # (Wrapping the bound method on the instance, before the hub's tasks first run.)
        first_fill = asyncio.get_running_loop().create_future()
        fill = hub.fill

        async def fill_and_report(until: int | None = None) -> None:
            try:
                await fill(until)
            finally:
                if not first_fill.done():
                    first_fill.set_result(None)

        hub.fill = fill_and_report  # type: ignore[method-assign]
        try:
            await asyncio.wait_for(asyncio.shield(hub.ready), 10)
            await asyncio.wait_for(first_fill, 10)
            return await asyncio.wait_for(body(hub), 30)
        finally:
            hub.close()

    return asyncio.run(main())


# -- helpers (all database work goes through db_call, as the hub's own does) ---------------


def _store(channel: str, data: Any) -> Event:
    """A row, with no broadcast: the hub only learns of it from the database or a notice."""
    return Event.objects.create(channel=channel, data=data)


async def store(channel: str = "a", data: Any = None) -> Event:
    return await db_call(_store, channel, data)


async def store_many(count: int, channel: str = "a") -> list[Event]:
    return [await store(channel, i) for i in range(count)]


async def apublish(channel: str = "a", data: Any = None) -> Event:
    return await db_call(publish, channel, data)


def _delete(*ids: int) -> None:
    Event.objects.filter(id__in=ids).delete()


def _keep_newest(count: int) -> None:
    """Prune as retention does, keeping the newest ``count`` events."""
    list(retention.prune(Retention(None, count), batch_size=1000))


def _frame_from_database(event_id: int) -> bytes:
    return Event.objects.get(pk=event_id).sse_frame()


def notice_of(event: Event) -> Notice:
    """The notice the publisher would have sent, through the real encoding."""
    return decode_notice(encode_notice(event.id, event.channel, event.sse_frame()))


async def receive(subscriber: Subscriber, count: int, within: float = 5.0) -> list[Notice]:
    """Wait until ``count`` notices were pushed to ``subscriber`` (or it is closed)."""
    got: list[Notice] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while len(got) < count:
        await asyncio.wait_for(subscriber.wait(), max(deadline - loop.time(), 0.001))
        if subscriber.closed:
            break
        got.extend(subscriber.frames)
        subscriber.frames.clear()
    return got


async def silence(subscriber: Subscriber, seconds: float) -> None:
    await asyncio.sleep(seconds)
    assert list(subscriber.frames) == []


async def live_subscriber(hub: Hub, *channels: str) -> Subscriber:
    subscriber = await hub.subscribe(channels or ("a",))
    subscriber.go_live(hub.last_id)
    return subscriber


def ids(notices: list[Notice]) -> list[int]:
    return [notice.id for notice in notices]


# -- ordering -------------------------------------------------------------------------------


def test_starts_at_the_newest_stored_id():
    before = [_store("a", i) for i in range(3)]

    async def body(hub: Hub) -> None:
        assert hub.last_id == before[-1].id
        subscriber = await live_subscriber(hub)
        # Already stored events are not live events.
        await silence(subscriber, 0.2)

    run_with_hub(body, warm_up=False)


def test_starts_at_zero_with_nothing_stored():
    async def body(hub: Hub) -> None:
        assert hub.last_id == 0

    run_with_hub(body, warm_up=False)


def test_a_fill_before_the_hub_has_read_where_it_starts_delivers_nothing():
    _store("a", "stored before the hub started")

    async def main() -> None:
        hub = Hub(get_broker())
        try:
            # Its first read of the newest id has not run yet: nothing is owed to anyone.
            assert hub.last_id is None
            await hub.fill()
            assert hub.last_id is None
            await asyncio.wait_for(asyncio.shield(hub.ready), 10)
        finally:
            hub.close()

    asyncio.run(main())


def test_delivers_published_events_in_id_order():
    async def body(hub: Hub) -> None:
        ab = await live_subscriber(hub, "a", "b")
        only_b = await live_subscriber(hub, "b")
        other = await live_subscriber(hub, "c")
        published = [await apublish("a" if i % 2 else "b", {"n": i}) for i in range(6)]
        got = await receive(ab, 6)
        assert ids(got) == [e.id for e in published]
        assert [n.channel for n in got] == [e.channel for e in published]
        for notice, event in zip(got, published, strict=True):
            assert notice.frame == await db_call(_frame_from_database, event.id)
        got_b = await receive(only_b, 3)
        assert ids(got_b) == [e.id for e in published if e.channel == "b"]
        # The bytes are built once and the same object goes to every stream.
        by_id = {n.id: n.frame for n in got}
        assert all(n.frame is by_id[n.id] for n in got_b)
        await silence(other, 0.1)
        assert hub.last_id == published[-1].id

    run_with_hub(body)


def test_a_notice_ahead_of_a_missing_id_waits_then_reads_the_gap():
    async def body(hub: Hub) -> None:
        subscriber = await live_subscriber(hub)
        first, second, third = await store_many(3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        hub._on_notice(notice_of(third))
        assert list(hub.pending) == [third.id]
        assert hub.last_id == first.id - 1
        # Nothing is delivered while the missing notices may still come.
        await silence(subscriber, GAP_WAIT / 2)
        got = await receive(subscriber, 3)
        assert loop.time() - started >= GAP_WAIT * 0.9
        assert ids(got) == [first.id, second.id, third.id]
        # The gap came from the database: the same bytes a publisher would have sent.
        assert [n.frame for n in got] == [first.sse_frame(), second.sse_frame(), third.sse_frame()]
        assert hub.last_id == third.id
        assert hub.pending == {}

    run_with_hub(body)


def test_missing_notices_that_arrive_in_time_are_delivered_from_the_notices():
    async def body(hub: Hub) -> None:
        subscriber = await live_subscriber(hub)
        first, second, third = await store_many(3)
        # Delete the rows: if the hub asked the database it would find nothing.
        await db_call(_delete, first.id, second.id, third.id)
        hub._on_notice(notice_of(third))
        hub._on_notice(notice_of(first))
        assert ids(list(subscriber.frames)) == [first.id]
        hub._on_notice(notice_of(second))
        assert ids(list(subscriber.frames)) == [first.id, second.id, third.id]
        assert hub.pending == {}
        assert hub.last_id == third.id

    run_with_hub(body)


def test_a_deleted_id_does_not_stall_delivery():
    async def body(hub: Hub) -> None:
        subscriber = await live_subscriber(hub)
        first, hole, third = await store_many(3)
        await db_call(_delete, hole.id)
        hub._on_notice(notice_of(first))
        hub._on_notice(notice_of(third))
        got = await receive(subscriber, 2, within=GAP_WAIT * 5)
        assert ids(got) == [first.id, third.id]
        assert hub.last_id == third.id
        # and the next one goes straight through
        fourth = await store()
        hub._on_notice(notice_of(fourth))
        assert ids(list(subscriber.frames)) == [fourth.id]

    run_with_hub(body)


def _publish_and_roll_back(channel: str) -> None:
    class Abort(Exception):
        pass

    try:
        with transaction.atomic():
            publish(channel, "rolled back")
            raise Abort
    except Abort:
        pass


def test_a_rolled_back_publish_does_not_stall_delivery():
    async def body(hub: Hub) -> None:
        subscriber = await live_subscriber(hub)
        before = await apublish("a", 1)
        await db_call(_publish_and_roll_back, "a")
        after = await apublish("a", 2)
        got = await receive(subscriber, 2, within=GAP_WAIT * 5)
        assert ids(got) == [before.id, after.id]
        assert [json.loads(n.frame.split(b"data: ")[1])["data"] for n in got] == [1, 2]
        last = await apublish("a", 3)
        assert ids(await receive(subscriber, 1, within=GAP_WAIT / 2)) == [last.id]
        return before.id, after.id

    before, after = run_with_hub(body)
    if connection.vendor == "postgresql":
        # The sequence does not roll back: the hub crossed a real hole in the ids.
        assert after == before + 2
    else:
        # SQLite's AUTOINCREMENT counter rolls back with the transaction: no hole.
        assert after == before + 1


def test_duplicates_are_dropped():
    async def body(hub: Hub) -> None:
        subscriber = await live_subscriber(hub)
        first, second, third = await store_many(3)
        hub._on_notice(notice_of(first))
        hub._on_notice(notice_of(first))
        hub._on_notice(notice_of(second))
        hub._on_notice(notice_of(first))
        hub._on_notice(notice_of(second))
        assert ids(list(subscriber.frames)) == [first.id, second.id]
        subscriber.frames.clear()
        # A notice that arrives after its id was read from the database is dropped too.
        fourth = await store()
        hub._on_notice(notice_of(fourth))
        assert ids(await receive(subscriber, 2)) == [third.id, fourth.id]
        hub._on_notice(notice_of(third))
        hub._on_notice(notice_of(fourth))
        await silence(subscriber, GAP_WAIT * 1.5)
        assert hub.pending == {}

    run_with_hub(body)


def test_notices_out_of_order_are_reordered():
    async def body(hub: Hub) -> None:
        subscriber = await live_subscriber(hub)
        events = await store_many(5)
        for index in (4, 2, 0, 3, 1):
            hub._on_notice(notice_of(events[index]))
        assert ids(list(subscriber.frames)) == [e.id for e in events]
        assert hub.pending == {}

    run_with_hub(body)


# -- slow streams ---------------------------------------------------------------------------


def test_a_live_subscriber_that_falls_behind_is_closed_and_others_keep_receiving():
    with with_notify(MAX_BUFFER=3):

        async def body(hub: Hub) -> None:
            slow = await live_subscriber(hub)
            fast = await live_subscriber(hub)
            events = await store_many(6)
            received = []
            for event in events:
                hub._on_notice(notice_of(event))
                received.extend(fast.frames)
                fast.frames.clear()
                if event is events[2]:
                    assert slow.closed is None
                    assert len(slow.frames) == 3
            assert slow.closed == "too-slow"
            assert list(slow.frames) == []
            await asyncio.wait_for(slow.wait(), 1)  # woken, so its stream sees the close
            assert ids(received) == [e.id for e in events]
            assert hub.last_id == events[-1].id

        run_with_hub(body)


def test_an_overflow_while_replaying_empties_the_buffer_and_sets_lost():
    with with_notify(MAX_BUFFER=3):

        async def body(hub: Hub) -> None:
            replaying = await hub.subscribe(["a"])
            assert replaying.replaying
            events = await store_many(5)
            for event in events[:3]:
                hub._on_notice(notice_of(event))
            assert ids(list(replaying.frames)) == [e.id for e in events[:3]]
            assert not replaying.lost
            hub._on_notice(notice_of(events[3]))
            assert replaying.lost
            assert list(replaying.frames) == []
            assert replaying.closed is None
            hub._on_notice(notice_of(events[4]))
            assert ids(list(replaying.frames)) == [events[4].id]
            assert replaying.closed is None

        run_with_hub(body)


def test_a_paused_subscriber_waits_until_resumed_and_is_closed_when_its_buffer_overflows():
    """Paused (the server's write buffer for the client is full), a stream writes nothing:
    events wait in the subscriber's bounded buffer; at MAX_BUFFER it is closed as too slow."""
    with with_notify(MAX_BUFFER=3):

        async def body(hub: Hub) -> None:
            subscriber = await live_subscriber(hub)
            events = await store_many(6)
            subscriber.pause()
            waiting = asyncio.ensure_future(subscriber.wait())
            hub._on_notice(notice_of(events[0]))
            subscriber.heartbeat_due = True
            subscriber._wake()
            await asyncio.sleep(0.05)
            assert not waiting.done()  # neither the event nor the heartbeat is written
            subscriber.resume()
            await asyncio.wait_for(waiting, 1)
            assert [notice.frame for notice in subscriber.take()] == [events[0].sse_frame()]
            subscriber.heartbeat_due = False
            subscriber.pause()
            waiting = asyncio.ensure_future(subscriber.wait())
            for event in events[1:4]:
                hub._on_notice(notice_of(event))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            assert subscriber.closed is None
            assert ids(list(subscriber.frames)) == [e.id for e in events[1:4]]
            hub._on_notice(notice_of(events[4]))
            assert subscriber.closed == "too-slow"
            assert list(subscriber.frames) == []
            await asyncio.wait_for(waiting, 1)  # woken by the close, though paused

        run_with_hub(body)


def test_unsubscribe_stops_delivery():
    async def body(hub: Hub) -> None:
        subscriber = await live_subscriber(hub, "a", "b")
        hub.unsubscribe(subscriber)
        assert subscriber.closed == "unsubscribed"
        assert hub.by_channel == {}
        assert hub.subscribers == set()
        event = await store("a")
        hub._on_notice(notice_of(event))
        assert list(subscriber.frames) == []

    run_with_hub(body)


def test_closing_the_hub_closes_its_subscribers():
    async def body(hub: Hub) -> None:
        subscriber = await live_subscriber(hub)
        hub.close()
        assert subscriber.closed == "hub-closed"

    run_with_hub(body)


# -- EventStream: replay, the seam, then live -----------------------------------------------


async def next_chunk(body: Any, within: float = 5.0) -> bytes:
    return await asyncio.wait_for(anext(body), within)


async def wait_buffered(subscriber: Subscriber, count: int) -> None:
    for _ in range(200):
        if len(subscriber.frames) >= count or subscriber.lost:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} notices never reached the buffer")


def test_stream_without_cursor_opens_at_the_newest_id_then_goes_live():
    async def body(hub: Hub) -> None:
        old = await apublish("a", "old")
        subscriber = await hub.subscribe(["a"])
        stream = EventStream(subscriber, None).body()
        assert await next_chunk(stream) == sse.open_frame(old.id)
        new = await apublish("a", "new")
        assert await next_chunk(stream) == new.sse_frame()
        await stream.aclose()

    run_with_hub(body)


def test_a_hub_on_a_polling_broker_is_never_current_and_streams_open_from_the_database():
    async def body(hub: Hub) -> None:
        # The embedded broker hears other processes' events only when it polls: its hub
        # may be behind, so a stream without a cursor reads the newest id itself.
        assert not hub.current()
        await apublish("a", "seen")
        unseen = await store("a", "unseen")  # no notice: the hub has not reached it
        subscriber = await hub.subscribe(["a"])
        assert subscriber.origin is None
        stream = EventStream(subscriber, None).body()
        assert await next_chunk(stream) == sse.open_frame(unseen.id)
        await stream.aclose()

    run_with_hub(body)


@pytest.mark.parametrize(
    ("cursor", "reason"),
    [
        ("abc", "invalid-cursor"),
        ("-1", "invalid-cursor"),
        ("9" * 21, "invalid-cursor"),
        ("9" * 20, "unknown-cursor"),
    ],
)
def test_stream_with_a_bad_cursor_resets_to_the_newest_id(cursor, reason):
    async def body(hub: Hub) -> None:
        await apublish("a")
        last = await apublish("b")
        oldest, _ = await db_call(id_bounds)
        subscriber = await hub.subscribe(["a"])
        stream = EventStream(subscriber, cursor).body()
        assert await next_chunk(stream) == sse.reset_frame(reason, oldest, last.id)
        new = await apublish("a")
        assert await next_chunk(stream) == new.sse_frame()
        await stream.aclose()

    run_with_hub(body)


def test_stream_with_a_cursor_beyond_the_newest_id():
    async def body(hub: Hub) -> None:
        last = await apublish("a")
        oldest, _ = await db_call(id_bounds)
        subscriber = await hub.subscribe(["a"])
        stream = EventStream(subscriber, str(last.id + 1)).body()
        assert await next_chunk(stream) == sse.reset_frame("unknown-cursor", oldest, last.id)
        await stream.aclose()

    run_with_hub(body)


def test_stream_replays_then_goes_live_without_repeating_across_the_seam():
    async def body(hub: Hub) -> None:
        events = [await apublish("a" if i != 1 else "other", i) for i in range(3)]
        subscriber = await hub.subscribe(["a"])
        stream = EventStream(subscriber, str(events[0].id)).body()
        # Published after the stream registered but before its replay query: it is in the
        # live buffer AND in the replay; the client must get it once.
        seam = await apublish("a", "seam")
        await wait_buffered(subscriber, 1)
        assert await next_chunk(stream) == sse.catchup_start_frame(events[0].id)
        assert await next_chunk(stream) == events[2].sse_frame() + seam.sse_frame()
        assert await next_chunk(stream) == sse.catchup_end_frame(2, seam.id)
        live = await apublish("a", "live")
        assert await next_chunk(stream) == live.sse_frame()
        await stream.aclose()

    run_with_hub(body)


def test_events_both_buffered_and_replayed_are_sent_once():
    async def body(hub: Hub) -> None:
        start = hub.last_id
        first, second = await store_many(2)
        subscriber = await hub.subscribe(["a"])
        # The hub delivers them after the stream subscribed and before its replay reads:
        # they are in its buffer and in the replay.
        hub._on_notice(notice_of(first))
        hub._on_notice(notice_of(second))
        assert len(subscriber.frames) == 2
        stream = EventStream(subscriber, str(start)).body()
        assert await next_chunk(stream) == sse.catchup_start_frame(start)
        assert await next_chunk(stream) == first.sse_frame() + second.sse_frame()
        assert await next_chunk(stream) == sse.catchup_end_frame(2, second.id)
        reading = asyncio.ensure_future(next_chunk(stream))
        await asyncio.sleep(0.05)  # the stream is live, waiting: the buffer was dropped
        assert not reading.done()
        third = await store()
        hub._on_notice(notice_of(third))
        assert await reading == third.sse_frame()
        await stream.aclose()

    run_with_hub(body)


def test_events_stored_before_the_hub_met_them_come_live_after_the_replay():
    async def body(hub: Hub) -> None:
        start = hub.last_id
        # Stored and committed, but their notices are late: the replay stops at the hub.
        first, second = await store_many(2)
        subscriber = await hub.subscribe(["a"])
        stream = EventStream(subscriber, str(start)).body()
        assert await next_chunk(stream) == sse.catchup_start_frame(start)
        assert await next_chunk(stream) == sse.catchup_end_frame(0, start)
        hub._on_notice(notice_of(first))
        hub._on_notice(notice_of(second))
        assert await next_chunk(stream) == first.sse_frame() + second.sse_frame()
        await stream.aclose()

    run_with_hub(body)


def test_stream_with_cursor_zero_replays_everything_retained():
    async def body(hub: Hub) -> None:
        events = [await apublish("a", i) for i in range(3)]
        oldest, _ = await db_call(id_bounds)
        subscriber = await hub.subscribe(["a"])
        stream = EventStream(subscriber, "0").body()
        expected = [
            sse.catchup_start_frame(oldest - 1),
            b"".join(e.sse_frame() for e in events),
            sse.catchup_end_frame(3, events[-1].id),
        ]
        if oldest > 1:
            # A flushed test database does not start again at id 1: ids 1..oldest-1 are
            # gone, which the stream reports before replaying what is left.
            expected.insert(0, sse.reset_frame("history-gone", oldest, oldest - 1))
        else:
            expected[0] = sse.catchup_start_frame(0)
        assert [await next_chunk(stream) for _ in expected] == expected
        await stream.aclose()

    run_with_hub(body)


def test_stream_replay_in_batches():
    with with_notify(REPLAY_BATCH=2):

        async def body(hub: Hub) -> None:
            start = hub.last_id
            events = [await apublish("a", i) for i in range(5)]
            subscriber = await hub.subscribe(["a"])
            stream = EventStream(subscriber, str(start)).body()
            chunks = [await next_chunk(stream) for _ in range(5)]
            assert chunks == [
                sse.catchup_start_frame(start),
                events[0].sse_frame() + events[1].sse_frame(),
                events[2].sse_frame() + events[3].sse_frame(),
                events[4].sse_frame(),
                sse.catchup_end_frame(5, events[-1].id),
            ]
            await stream.aclose()

        run_with_hub(body)


def test_stream_history_gone():
    async def body(hub: Hub) -> None:
        warm_up = hub.last_id
        events = [await apublish("a", i) for i in range(4)]
        await db_call(_delete, warm_up, events[0].id, events[1].id)
        subscriber = await hub.subscribe(["a"])
        # The client saw events[0]; events[1] is gone.
        stream = EventStream(subscriber, str(events[0].id)).body()
        oldest = events[2].id
        assert await next_chunk(stream) == sse.reset_frame("history-gone", oldest, oldest - 1)
        assert await next_chunk(stream) == sse.catchup_start_frame(oldest - 1)
        assert await next_chunk(stream) == events[2].sse_frame() + events[3].sse_frame()
        assert await next_chunk(stream) == sse.catchup_end_frame(2, events[3].id)
        await stream.aclose()

    run_with_hub(body)


def frames(events: list[Event]) -> bytes:
    return b"".join(event.sse_frame() for event in events)


def test_pruning_between_two_replay_batches_is_reported_before_the_rest():
    # The case: the newest 8 kept while a client replays 20 in batches of 5. It got
    # 1-5, then 13-20, and no reset.
    with with_notify(REPLAY_BATCH=5):

        async def body(hub: Hub) -> None:
            start = hub.last_id
            events = await store_many(20)
            await hub.fill()  # a replay reads what the hub has met
            subscriber = await hub.subscribe(["a"])
            stream = EventStream(subscriber, str(start)).body()
            assert await next_chunk(stream) == sse.catchup_start_frame(start)
            assert await next_chunk(stream) == frames(events[:5])
            await db_call(_keep_newest, 8)
            kept = events[12:]
            oldest = kept[0].id
            assert await next_chunk(stream) == sse.reset_frame("history-gone", oldest, oldest - 1)
            assert await next_chunk(stream) == frames(kept[:5])
            assert await next_chunk(stream) == frames(kept[5:])
            assert await next_chunk(stream) == sse.catchup_end_frame(13, kept[-1].id)
            live = await apublish("a", "live")
            assert await next_chunk(stream) == live.sse_frame()
            await stream.aclose()

        run_with_hub(body)


def test_pruning_every_event_left_of_the_stream_channels_between_batches_is_reported():
    with with_notify(REPLAY_BATCH=2):

        async def body(hub: Hub) -> None:
            start = hub.last_id
            mine = await store_many(3, "a")
            others = await store_many(2, "b")
            await hub.fill()  # a replay reads what the hub has met
            subscriber = await hub.subscribe(["a"])
            stream = EventStream(subscriber, str(start)).body()
            assert await next_chunk(stream) == sse.catchup_start_frame(start)
            assert await next_chunk(stream) == frames(mine[:2])
            # mine[2] goes: the next batch finds nothing of "a", and must still say so.
            await db_call(_keep_newest, 2)
            oldest = others[0].id
            assert await next_chunk(stream) == sse.reset_frame("history-gone", oldest, oldest - 1)
            assert await next_chunk(stream) == sse.catchup_end_frame(2, oldest - 1)
            await stream.aclose()

        run_with_hub(body)


async def pruned_before_the_hub_read_them(hub: Hub, count: int, kept: int) -> list[Event]:
    """A burst of ``count`` events whose notices are late, of which retention keeps the newest
    ``kept`` before the hub reads the gap (when the notice of the newest comes). Returns the
    events kept, once the hub has delivered them."""
    events = await store_many(count)
    await db_call(_keep_newest, kept)
    hub._on_notice(notice_of(events[-1]))
    for _ in range(500):
        if hub.last_id == events[-1].id:
            return events[-kept:]
        await asyncio.sleep(0.01)
    raise AssertionError("the hub never read the gap")


def test_live_streams_the_hub_could_not_deliver_pruned_events_to_are_closed():
    async def body(hub: Hub) -> None:
        opened = hub.last_id
        subscriber = await hub.subscribe(["a"])
        stream = EventStream(subscriber, None).body()
        assert await next_chunk(stream) == sse.open_frame(opened)
        reading = asyncio.ensure_future(next_chunk(stream))
        await asyncio.sleep(0.05)  # the stream is live, waiting
        other_channel = await live_subscriber(hub, "b")
        kept = await pruned_before_the_hub_read_them(hub, 10, kept=3)
        # Which channels the deleted events were on is gone with them: every live stream
        # that may have been owed one ends, with none of what came after the gap.
        with pytest.raises(StopAsyncIteration):
            await reading
        assert subscriber.closed == other_channel.closed == "history-gone"
        assert other_channel.frames == []
        # Its client resumes from its cursor, and is told.
        resumed = await hub.subscribe(["a"])
        stream = EventStream(resumed, str(opened)).body()
        oldest = kept[0].id
        assert await next_chunk(stream) == sse.reset_frame("history-gone", oldest, oldest - 1)
        assert await next_chunk(stream) == sse.catchup_start_frame(oldest - 1)
        assert await next_chunk(stream) == frames(kept)
        await stream.aclose()

    run_with_hub(body)


def test_a_hub_that_started_on_an_empty_table_takes_no_id_before_its_first_for_a_pruned_one():
    # Ids were handed out and deleted before the hub started (a test database is flushed; an
    # application may empty the table): nobody was owed them.
    _delete(_store("a", "deleted before the hub started").id)

    async def body(hub: Hub) -> None:
        assert hub.last_id == 0
        subscriber = await live_subscriber(hub)
        event = await apublish("a", "first")
        assert event.id > 1
        assert ids(await receive(subscriber, 1)) == [event.id]
        assert subscriber.closed is None

    run_with_hub(body, warm_up=False)


def test_streams_replaying_or_being_let_in_end_too_at_a_pruned_gap():
    """What the deleted ids were is gone, a revocation among them perhaps: a stream still
    replaying, and one being let in, end as the live ones do; their clients resume from
    their cursors and are authorized again."""

    async def body(hub: Hub) -> None:
        start = hub.last_id
        subscriber = await hub.subscribe(["a"], "7")
        stream = EventStream(subscriber, str(start)).body()
        # Nothing to replay yet; the stream counts on the hub for what comes next.
        assert await next_chunk(stream) == sse.catchup_start_frame(start)
        ticket = hub.ticket()
        kept = await pruned_before_the_hub_read_them(hub, 10, kept=3)
        # No event: what the stream had in flight is its catch-up's end, at its cursor.
        assert [chunk async for chunk in stream] == [sse.catchup_end_frame(0, start)]
        assert subscriber.closed == "history-gone"
        assert hub.attach(["a"], "8", ticket).closed == "history-gone"
        resumed = await hub.subscribe(["a"], "7")
        stream = EventStream(resumed, str(start)).body()
        oldest = kept[0].id
        assert await next_chunk(stream) == sse.reset_frame("history-gone", oldest, oldest - 1)
        assert await next_chunk(stream) == sse.catchup_start_frame(oldest - 1)
        assert await next_chunk(stream) == frames(kept)
        await stream.aclose()

    run_with_hub(body)


def test_stream_rereads_the_database_when_live_events_overflowed_during_replay():
    with with_notify(MAX_BUFFER=2):

        async def body(hub: Hub) -> None:
            start = hub.last_id
            first = await apublish("a", 0)
            subscriber = await hub.subscribe(["a"])
            stream = EventStream(subscriber, str(start)).body()
            assert await next_chunk(stream) == sse.catchup_start_frame(start)
            assert await next_chunk(stream) == first.sse_frame()
            # While the stream is suspended mid-replay, more arrive than its buffer holds.
            burst = [await apublish("a", i) for i in range(1, 5)]
            await wait_buffered(subscriber, 99)
            assert subscriber.lost
            assert await next_chunk(stream) == b"".join(e.sse_frame() for e in burst)
            assert await next_chunk(stream) == sse.catchup_end_frame(5, burst[-1].id)
            live = await apublish("a", "live")
            assert await next_chunk(stream) == live.sse_frame()
            await stream.aclose()

        run_with_hub(body)


def test_stream_rereads_the_database_when_overflowed_before_going_live():
    with with_notify(MAX_BUFFER=2):

        async def body(hub: Hub) -> None:
            start = hub.last_id
            first = await apublish("a", 0)
            subscriber = await hub.subscribe(["a"])
            stream = EventStream(subscriber, str(start)).body()
            assert await next_chunk(stream) == sse.catchup_start_frame(start)
            assert await next_chunk(stream) == first.sse_frame()
            assert await next_chunk(stream) == sse.catchup_end_frame(1, first.id)
            # Still replaying (not live yet) when these arrive.
            burst = [await apublish("a", i) for i in range(1, 5)]
            await wait_buffered(subscriber, 99)
            assert subscriber.lost and subscriber.closed is None
            assert await next_chunk(stream) == b"".join(e.sse_frame() for e in burst)
            live = await apublish("a", "live")
            assert await next_chunk(stream) == live.sse_frame()
            await stream.aclose()

        run_with_hub(body)


def test_a_paused_stream_reads_no_more_of_its_replay_until_resumed():
    with with_notify(REPLAY_BATCH=2):

        async def body(hub: Hub) -> None:
            start = hub.last_id
            events = await store_many(5)
            await hub.fill()  # a replay reads what the hub has met
            subscriber = await hub.subscribe(["a"])
            stream = EventStream(subscriber, str(start)).body()
            assert await next_chunk(stream) == sse.catchup_start_frame(start)
            assert await next_chunk(stream) == b"".join(e.sse_frame() for e in events[:2])
            subscriber.pause()
            pending = asyncio.ensure_future(anext(stream))
            await asyncio.sleep(0.1)
            assert not pending.done()
            subscriber.resume()
            assert await asyncio.wait_for(pending, 5) == b"".join(
                e.sse_frame() for e in events[2:4]
            )
            assert await next_chunk(stream) == events[4].sse_frame()
            assert await next_chunk(stream) == sse.catchup_end_frame(5, events[4].id)
            # Closed while paused: the stream ends.
            subscriber.pause()
            pending = asyncio.ensure_future(anext(stream))
            await asyncio.sleep(0.05)
            assert not pending.done()
            subscriber.close("hub-closed")
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(pending, 5)

        run_with_hub(body)


async def writer(hub: Hub, chunks: list[bytes], gate: asyncio.Event) -> None:
    """A stream's task as notify.asgi runs it: each chunk is written before the next is read;
    ``gate`` stands for a write that blocks while the client does not read."""
    subscriber = await hub.subscribe(["a"])
    async for chunk in EventStream(subscriber, None).body():
        chunks.append(chunk)
        await gate.wait()


async def stream_task(hub: Hub, gate: asyncio.Event) -> tuple[asyncio.Task[None], Subscriber, list]:
    chunks: list[bytes] = []
    task = asyncio.create_task(writer(hub, chunks, gate))
    for _ in range(500):
        if chunks:
            break
        await asyncio.sleep(0.01)
    assert chunks[0].startswith(b"id: ")  # notify.open
    (subscriber,) = hub.subscribers
    return task, subscriber, chunks


def test_live_stream_blocked_in_a_write_is_cancelled_when_it_falls_behind():
    with with_notify(MAX_BUFFER=2):

        async def body(hub: Hub) -> None:
            gate = asyncio.Event()
            gate.set()
            task, subscriber, chunks = await stream_task(hub, gate)
            events = await store_many(4)
            gate.clear()  # from now on the client does not read
            hub._on_notice(notice_of(events[0]))
            for _ in range(100):
                if subscriber.sending:
                    break
                await asyncio.sleep(0.01)
            assert subscriber.sending  # its write of events[0] is blocked
            assert chunks[1] == events[0].sse_frame()
            hub._on_notice(notice_of(events[1]))
            hub._on_notice(notice_of(events[2]))
            assert subscriber.closed is None
            hub._on_notice(notice_of(events[3]))
            assert subscriber.closed == "too-slow"
            with pytest.raises(asyncio.CancelledError):
                await task
            assert len(chunks) == 2

        run_with_hub(body)


def test_live_stream_that_falls_behind_between_writes_ends():
    with with_notify(MAX_BUFFER=2):

        async def body(hub: Hub) -> None:
            gate = asyncio.Event()
            gate.set()
            task, subscriber, chunks = await stream_task(hub, gate)
            await asyncio.sleep(0.05)
            assert not subscriber.sending  # waiting for events
            events = await store_many(3)
            # Three at once, before the stream's task gets to run.
            for event in events:
                hub._on_notice(notice_of(event))
            assert subscriber.closed == "too-slow"
            await asyncio.wait_for(task, 5)  # the body ends; the task is not cancelled
            assert len(chunks) == 1

        run_with_hub(body)


def test_live_stream_batches_what_is_waiting_into_one_write():
    async def body(hub: Hub) -> None:
        subscriber = await hub.subscribe(["a", "b"])
        stream = EventStream(subscriber, None).body()
        await next_chunk(stream)  # notify.open
        events = [await apublish("ab"[i % 2], i) for i in range(3)]
        await wait_buffered(subscriber, 3)
        assert await next_chunk(stream) == b"".join(e.sse_frame() for e in events)
        await stream.aclose()

    run_with_hub(body)


def test_idle_live_stream_gets_heartbeats():
    with with_notify(HEARTBEAT_SECONDS=0.3):

        async def body(hub: Hub) -> None:
            subscriber = await hub.subscribe(["a"])
            stream = EventStream(subscriber, None).body()
            await next_chunk(stream)  # notify.open
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await next_chunk(stream, within=3) == sse.HEARTBEAT
            assert await next_chunk(stream, within=3) == sse.HEARTBEAT
            assert loop.time() - started >= 0.3
            event = await apublish("a")
            assert await next_chunk(stream) == event.sse_frame()
            await stream.aclose()

        run_with_hub(body)


# -- the hub's safety net, and streams being let in -----------------------------------------


def test_a_subscriber_whose_task_ended_is_dropped():
    """However a stream's task ends (returned, failed, cancelled) without unsubscribing,
    the hub forgets its subscriber: no presence, no gauge, no deliveries to nobody."""

    async def body(hub: Hub) -> None:
        async def returns() -> Subscriber:
            return await hub.subscribe(["a"], "7")

        async def fails() -> None:
            await hub.subscribe(["a"])
            raise RuntimeError("the stream failed")

        async def waits() -> None:
            await hub.subscribe(["b"])
            await asyncio.sleep(60)

        subscriber = await asyncio.create_task(returns())
        with pytest.raises(RuntimeError):
            await asyncio.create_task(fails())
        cancelled = asyncio.create_task(waits())
        await asyncio.sleep(0.05)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        await asyncio.sleep(0)
        assert subscriber.closed == "unsubscribed"
        assert (hub.subscribers, hub.by_channel, hub.by_user) == (set(), {}, {})

    run_with_hub(body)


def test_unsubscribing_leaves_nothing_on_a_long_lived_task():
    """A task that subscribes again and again (``manage.py listen`` does) keeps no callback
    per subscription."""

    async def body(hub: Hub) -> None:
        task = asyncio.current_task()
        assert task is not None
        before = len(task._callbacks)  # type: ignore[attr-defined]
        for _ in range(100):
            hub.unsubscribe(await hub.subscribe(["a"]))
        assert len(task._callbacks) == before  # type: ignore[attr-defined]

    run_with_hub(body)


def _revoke(*pks: str) -> int:
    from notify.revocation import revoke_users

    return revoke_users(pks)[0].id


def test_a_stream_revoked_while_it_was_being_let_in_is_closed_as_it_joins():
    async def body(hub: Hub) -> None:
        before = hub.ticket()  # taken before its user was looked up
        untouched = hub.ticket()
        revocation = await db_call(_revoke, "7")
        for _ in range(200):
            if hub.last_id is not None and hub.last_id >= revocation:
                break
            await asyncio.sleep(0.01)
        after = hub.ticket()  # taken once the revocation was met: it saw the change
        revoked = hub.attach(["a"], "7", before)
        other_user = hub.attach(["a"], "8", untouched)
        late = hub.attach(["a"], "7", after)
        assert revoked.closed == "revoked"
        assert other_user.closed is None and late.closed is None
        assert hub.tickets == set()  # attach closes its ticket
        # A notice with no streams on it, but a revocation of open ones, closes them.
        await db_call(_revoke, "8", "7")
        await asyncio.wait_for(other_user.wait(), 5)
        await asyncio.wait_for(late.wait(), 5)
        assert (other_user.closed, late.closed) == ("revoked", "revoked")

    run_with_hub(body)


def test_a_stream_revoked_while_its_replay_is_read_sends_none_of_it():
    """The replay's first query waits on a lock another connection holds; the stream is
    revoked meanwhile: what that query read is not sent. (PostgreSQL: SQLite's WAL lets
    readers through any writer's lock.)"""
    if connection.vendor != "postgresql":
        pytest.skip("needs a lock that makes readers wait")

    async def body(hub: Hub) -> None:
        events = [await store("a", n) for n in range(3)]
        subscriber = await hub.subscribe(["a"], "7")
        stream = EventStream(subscriber, str(events[0].id - 1)).body()
        with locked_events_table():
            first = asyncio.ensure_future(anext(stream))
            await asyncio.sleep(0.3)  # the replay's query is waiting on the lock
            assert not first.done()
            hub.revoke(["7"])
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(first, 10)

    run_with_hub(body)


class locked_events_table:
    """Another PostgreSQL connection holds the events table, so that reads of it wait."""

    def __enter__(self) -> None:
        import psycopg

        settings = connection.settings_dict
        self.other = psycopg.connect(
            host=settings["HOST"] or None,
            port=settings["PORT"] or None,
            user=settings["USER"] or None,
            dbname=settings["NAME"],
        )
        self.other.execute(f"LOCK TABLE {Event._meta.db_table} IN ACCESS EXCLUSIVE MODE")

    def __exit__(self, *exc: object) -> None:
        self.other.rollback()
        self.other.close()


def test_a_replay_reads_no_further_than_the_hub_has_delivered():
    """Events the hub has not met yet reach the stream through the hub, in id order, after
    any revocation before them: the replay never reads past the hub."""

    async def body(hub: Hub) -> None:
        seen = await apublish("a", "seen")  # through the hub
        ahead = await store("a", "ahead")  # stored, no notice: the hub is behind
        subscriber = await hub.subscribe(["a"], "7")
        stream = EventStream(subscriber, str(seen.id - 1)).body()
        assert await next_chunk(stream) == sse.catchup_start_frame(seen.id - 1)
        assert await next_chunk(stream) == seen.sse_frame()
        assert await next_chunk(stream) == sse.catchup_end_frame(1, seen.id)
        await hub.fill()  # the hub meets "ahead": live now
        assert await next_chunk(stream) == ahead.sse_frame()
        await stream.aclose()

    run_with_hub(body)


def test_a_stream_whose_replay_meets_its_revocation_sends_nothing_after_it():
    """A revocation stored (and the user's events after it) before the hub met it, while a
    stream of that user, authorized before it, replays: the stream sends nothing stored
    after the revocation."""

    async def body(hub: Hub) -> None:
        before = await apublish("user:7", "before")
        ticket = hub.ticket()
        subscriber = hub.attach(["user:7"], "7", ticket)
        revocation = await db_call(_revoke_quietly, "7")
        after = await store("user:7", "after the revocation")
        stream = EventStream(subscriber, str(before.id - 1)).body()
        sent = [await next_chunk(stream) for _ in range(3)]
        assert sent[1] == before.sse_frame()
        await hub.fill()  # the hub meets the revocation, then "after"
        rest = [chunk async for chunk in stream]
        assert subscriber.closed == "revoked"
        assert after.sse_frame() not in rest
        assert revocation > before.id

    run_with_hub(body)


def _revoke_quietly(*pks: str) -> int:
    """A revocation stored with no notice: the hub meets it only when it reads the database."""
    from notify.control import REVOCATION

    return Event.objects.create(channel=REVOCATION, event=REVOCATION, data={"users": list(pks)}).id
