"""notify.publish / apublish: stored, validated first, broadcast on Redis after commit.

The broadcast is observed with a plain redis client subscribed to the real pub/sub channel.
"""

import asyncio
from datetime import UTC

import pytest
from asgiref.sync import sync_to_async
from django.core.exceptions import ValidationError
from django.db import connections, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

import notify
from notify.api import prepare, publish, publish_many
from notify.broker import decode_notice
from notify.models import Event
from tests.conftest import Listener

pytestmark = pytest.mark.django_db(transaction=True)

# A payload that exercises every normalisation: unsorted keys, int keys, tuples, non-ASCII,
# line separators, floats that jsonb rewrites.
AWKWARD = {
    "zeta": 1,
    "alpha": {"y": [1, (2, 3)], 10: "int key", 9: "another"},
    "uni": "héllo wörld 😀 \u2028 \u2029 \r\n 日本",
    "big": 1e16,
    "neg_zero": -0.0,
    "small": 1.5e-07,
    "float": 100.0,
    "huge_int": 2**70,
    "empty": {},
    "none": None,
}
AWKWARD_STORED = {
    "zeta": 1,
    "alpha": {"y": [1, [2, 3]], "10": "int key", "9": "another"},
    "uni": "héllo wörld 😀 \u2028 \u2029 \r\n 日本",
    "big": 10**16,
    "neg_zero": 0.0,
    "small": 1.5e-07,
    "float": 100.0,
    "huge_int": 2**70,
    "empty": {},
    "none": None,
}


@pytest.fixture
def listener(redis_url):
    listening = Listener(redis_url)
    yield listening
    listening.close()


def test_publish_stores_and_returns_the_event():
    event = notify.publish("orders", {"total": 3})
    assert isinstance(event, Event)
    assert event.pk is not None
    stored = Event.objects.get(pk=event.pk)
    assert (stored.channel, stored.event, stored.data) == ("orders", "message", {"total": 3})
    assert stored.created == event.created
    assert event.created.tzinfo is not None
    assert event.created.utcoffset().total_seconds() == 0
    assert stored.created.astimezone(UTC) == event.created


def test_publish_defaults_and_event_type():
    plain = publish("broadcast")
    typed = publish("broadcast", "x", event="order.paid")
    assert (plain.event, plain.data) == ("message", None)
    assert Event.objects.get(pk=plain.pk).data is None
    assert (typed.event, Event.objects.get(pk=typed.pk).event) == ("order.paid", "order.paid")
    assert typed.id > plain.id


def test_ids_increase():
    ids = [publish("a", i).id for i in range(5)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 5


def test_data_is_stored_normalized():
    event = publish("orders", AWKWARD)
    assert event.data == AWKWARD_STORED
    assert Event.objects.get(pk=event.pk).data == AWKWARD_STORED


@pytest.mark.parametrize(
    ("channel", "data", "event", "fragment"),
    [
        ("", None, "message", "channel is empty"),
        ("a b", None, "message", "contains a space"),
        ("x" * 201, None, "message", "the limit is 200"),
        ("ok", None, "notify.open", "reserved"),
        ("ok", None, "bad type", "contains a space"),
        ("ok", {1, 2}, "message", "not JSON-serializable"),
        ("ok", float("nan"), "message", "NaN"),
        ("ok", "\x00", "message", "NUL"),
        ("ok", "x" * 70_000, "message", "the limit is 65,536"),
    ],
)
def test_validation_happens_before_anything_is_stored(listener, channel, data, event, fragment):
    before = Event.objects.count()
    with pytest.raises(ValidationError) as caught:
        publish(channel, data, event=event)
    assert fragment in caught.value.messages[0]
    assert Event.objects.count() == before
    listener.assert_silent(0.2)


def test_payload_limit_follows_settings(settings, listener):
    with override_settings(NOTIFY={**settings.NOTIFY, "MAX_PAYLOAD_BYTES": 10}):
        with pytest.raises(ValidationError):
            publish("ok", "x" * 9)
        assert Event.objects.count() == 0
        event = publish("ok", "x" * 8)
    assert decode_notice(listener.next()).id == event.id


def test_publish_outside_a_transaction_broadcasts_at_once(listener):
    event = publish("orders", {"total": 3})
    message = listener.next()
    assert message is not None
    notice = decode_notice(message)
    assert (notice.id, notice.channel) == (event.id, "orders")
    assert message.startswith(b"%d orders\n" % event.id)
    assert notice.frame == Event.objects.get(pk=event.pk).sse_frame()
    assert notice.frame == (
        b"id: %d\nevent: message\n" % event.id
        + b'data: {"id": %d, "channel": "orders", "event": "message", "created": "' % event.id
        + event.created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
        + b'", "data": {"total": 3}}\n\n'
    )


@pytest.mark.parametrize(
    "data",
    [
        AWKWARD,
        {"b": 1, "a": 2, "c": {"z": 0, "y": [{"q": 1, "p": 2}]}},
        {3: "three", 1: "one", 20: "twenty"},
        {10: "mixed", "b": 2, 9: "key types"},
        ("tuple", ("nested", 1)),
        "é ü ß 日本語 😀 \u2028",
        [1e20, -0.0, 0.1 + 0.2, 1e-300, 5e-324, 1.7976931348623157e308],
        12345678901234567890123,
        None,
    ],
)
def test_live_bytes_equal_the_bytes_rebuilt_from_the_database(listener, data):
    event = publish("mixed:stuff/1", data, event="thing.happened")
    notice = decode_notice(listener.next())
    assert (notice.id, notice.channel) == (event.id, "mixed:stuff/1")
    replayed = Event.objects.get(pk=event.pk).sse_frame()
    assert notice.frame == replayed
    assert notice.frame == event.sse_frame()
    notice.frame.decode("ascii")
    assert notice.frame.count(b"\n") == 4  # id, event, data, blank


def test_inside_atomic_nothing_is_sent_before_commit(listener):
    with transaction.atomic():
        first = publish("orders", 1)
        second = publish("orders", 2)
        listener.assert_silent(0.5)
    notices = [decode_notice(listener.next()), decode_notice(listener.next())]
    assert [n.id for n in notices] == [first.id, second.id]
    assert [n.frame for n in notices] == [
        Event.objects.get(pk=first.pk).sse_frame(),
        Event.objects.get(pk=second.pk).sse_frame(),
    ]


def test_after_a_rollback_nothing_is_ever_sent(listener):
    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        publish("orders", "rolled back")
        raise Abort
    assert not Event.objects.filter(data="rolled back").exists()
    listener.assert_silent(0.5)
    later = publish("orders", "committed")
    notice = decode_notice(listener.next())
    assert notice.id == later.id
    assert b"rolled back" not in notice.frame
    listener.assert_silent(0.2)


def test_a_rolled_back_savepoint_sends_nothing(listener):
    class Abort(Exception):
        pass

    with transaction.atomic():
        kept = publish("orders", "kept")
        with pytest.raises(Abort), transaction.atomic():
            publish("orders", "dropped")
            raise Abort
        listener.assert_silent(0.3)
    notice = decode_notice(listener.next())
    assert notice.id == kept.id
    listener.assert_silent(0.3)
    assert list(Event.objects.values_list("data", flat=True)) == ["kept"]


def test_apublish_from_async_code(listener):
    async def main():
        try:
            return await notify.apublish("orders", {"async": True}, event="from.async")
        finally:
            # asgiref's thread opened a connection of its own: release it.
            await sync_to_async(connections.close_all)()

    event = asyncio.run(main())
    assert isinstance(event, Event)
    stored = Event.objects.get(pk=event.pk)
    assert (stored.event, stored.data) == ("from.async", {"async": True})
    notice = decode_notice(listener.next())
    assert notice.id == event.id
    assert notice.frame == stored.sse_frame()


def test_apublish_validates():
    async def main():
        try:
            await notify.apublish("bad channel", 1)
        finally:
            await sync_to_async(connections.close_all)()

    with pytest.raises(ValidationError, match="contains a space"):
        asyncio.run(main())
    assert Event.objects.count() == 0


def test_deeply_nested_data_is_refused_before_storing(listener):
    # Data that json.dumps can still encode at this depth, but Django's deeper stack could
    # not store (RecursionError) and a server could not read back: a ValidationError.
    for depth in (501, 940, 990):
        value: list = []
        for _ in range(depth - 1):
            value = [value]
        with pytest.raises(ValidationError) as caught:
            publish("deep", value)
        assert caught.value.code == "too_deep"
    assert Event.objects.count() == 0
    listener.assert_silent(0.2)


def test_data_nested_to_the_limit_is_stored_and_replayed(listener):
    value: list = []
    for _ in range(499):
        value = [value]
    event = publish("deep", value)
    notice = decode_notice(listener.next())
    assert notice.frame == Event.objects.get(pk=event.pk).sse_frame()
    assert b'"data": ' + b"[" * 500 + b"]" * 500 + b"}" in notice.frame


def test_publish_many_stores_in_one_insert_and_broadcasts_in_id_order(listener):
    batch = [prepare("orders", {"n": n}, event="created") for n in range(5)]
    with CaptureQueriesContext(connections["default"]) as queries:
        events = publish_many(batch)
    inserts = [q for q in queries.captured_queries if "INSERT INTO" in q["sql"]]
    assert len(inserts) == 1
    if connections["default"].vendor == "postgresql":
        # Outside a transaction: one statement takes the ordering lock and inserts; its
        # commit is the statement's own (no BEGIN, lock, INSERT, COMMIT round trips).
        assert len(queries.captured_queries) == 1
        assert "pg_advisory_xact_lock" in inserts[0]["sql"]
    ids = [event.id for event in events]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert [e.data for e in Event.objects.filter(id__in=ids)] == [{"n": n} for n in range(5)]
    notices = [decode_notice(listener.next()) for _ in ids]
    assert [notice.id for notice in notices] == ids
    assert notices[0].frame == Event.objects.get(id=ids[0]).sse_frame()
    listener.assert_silent()


def test_publish_many_in_a_rolled_back_transaction_sends_nothing(listener):
    with pytest.raises(RuntimeError), transaction.atomic():
        publish_many([prepare("orders", n) for n in range(3)])
        raise RuntimeError("rolled back")
    assert not Event.objects.exists()
    listener.assert_silent()
    assert publish_many([]) == []


def test_publish_outside_a_transaction_stores_the_data_as_given(listener):
    """On PostgreSQL the data goes to the server as the JSON text publish encoded: it must be
    stored as the same value (None as SQL NULL, as the transaction path stores it)."""
    values = [None, {"b": "café ☃", "a": [1, 2.5, True]}, "text", 0, []]
    events = [publish("shapes", value) for value in values]
    stored = Event.objects.filter(id__in=[e.id for e in events])
    assert [e.data for e in stored] == values
    assert Event.objects.filter(id=events[0].id, data__isnull=True).exists()
    for event in events:
        notice = decode_notice(listener.next())
        assert notice.frame == Event.objects.get(id=event.id).sse_frame()
