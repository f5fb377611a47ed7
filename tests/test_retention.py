"""notify.retention: passes fixed at their start, one DELETE per batch, the newest event
always kept, pruning after publish one batch at a time, and the stream's history-gone reset."""

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

import notify
from notify import retention
from notify.conf import Retention
from notify.models import Event
from tests.conftest import SSEClient, payload

pytestmark = pytest.mark.django_db(transaction=True)


def publish(count: int, channel: str = "broadcast") -> list[int]:
    return [notify.publish(channel, {"n": n}).id for n in range(count)]


def backdate(ids: list[int], days: float) -> None:
    Event.objects.filter(id__in=ids).update(created=timezone.now() - timedelta(days=days))


def stored() -> list[int]:
    return list(Event.objects.values_list("id", flat=True))


def deletes(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if q["sql"].startswith("DELETE")]


@pytest.fixture(autouse=True)
def fresh_pruner():
    retention.reset_pruner()
    yield
    retention.reset_pruner()


def test_nothing_to_plan_without_limits_or_events():
    assert retention.plan(Retention(None, None)) is None
    assert retention.plan(Retention(60, 5)) is None  # no events at all
    publish(3)
    assert retention.plan(Retention(None, None)) is None


def test_max_age_deletes_the_older_events():
    ids = publish(5)
    backdate(ids[:3], days=8)
    deleted = list(retention.prune(Retention(7 * 86400, None), batch_size=100))
    assert deleted == [3]
    assert stored() == ids[3:]


def test_max_events_keeps_the_newest():
    ids = publish(6)
    assert list(retention.prune(Retention(None, 2), batch_size=100)) == [4]
    assert stored() == ids[4:]
    assert list(retention.prune(Retention(None, 2), batch_size=100)) == []


def test_revocations_do_not_count_towards_max_events():
    """Logging in and out stores revocations: a user who does it in a loop must not push the
    site's events out of their history."""
    from notify.revocation import revoke_sessions

    ids = publish(3)
    revocations = [row.id for n in range(10) for row in revoke_sessions([f"s{n}"])]
    list(retention.prune(Retention(None, 2), batch_size=100))
    # The two newest events, and the revocations stored after them (a prefix of ids goes).
    assert stored() == [*ids[1:], *revocations]


def test_both_limits_delete_what_either_one_would():
    ids = publish(6)
    backdate(ids[:3], days=30)
    list(retention.prune(Retention(86400, 4), batch_size=100))
    assert stored() == ids[3:]  # max_age deleted more
    list(retention.prune(Retention(86400, 2), batch_size=100))
    assert stored() == ids[4:]  # max_events deleted more


# -- only ever a prefix of the ids ----------------------------------------------------------
# ``created`` is the publishing process's clock, read before the publisher waits for the
# ordering lock; publishers on other hosts have other clocks. So ``created`` may run against
# id order, and a stream that resumes across a deleted id that is above the oldest kept one
# would never be told (it compares its cursor with the oldest id).


def test_max_age_deletes_only_the_ids_below_the_first_recent_one():
    ids = publish(5)
    # ids[3] looks old (its publisher's clock is behind), but ids[2] before it is recent.
    backdate([ids[0], ids[1], ids[3]], days=30)
    prune_pass = retention.plan(Retention(86400, None))
    assert prune_pass is not None and retention.count(prune_pass) == 2
    list(retention.prune(Retention(86400, None), batch_size=1))
    assert stored() == ids[2:]


def test_a_client_resuming_across_an_event_that_looks_older_than_the_next_misses_nothing(server):
    ids = publish(3)
    backdate([ids[1]], days=30)
    list(retention.prune(Retention(86400, None), batch_size=100))
    with SSEClient(f"{server.url}/notify/stream/", last_event_id=str(ids[0])) as client:
        got = client.until(lambda event: event.event == "notify.catchup-end")
    assert [int(event.id) for event in got if event.event == "message"] == ids[1:]


def _advisory_lock_waiters() -> int:
    """Sessions of this database waiting for an advisory lock (pg_locks, not
    pg_stat_activity: that one is a snapshot taken once per transaction)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        return cursor.fetchone()[0]


def test_publishers_waiting_for_the_ordering_lock_store_created_out_of_id_order():
    """One cause, without touching ``created``: a publisher in autocommit reads the clock,
    then waits for the ordering lock that a transaction holds, which publishes once more.
    Pruning by age then still deletes only the ids below the first recent one."""
    if connection.vendor != "postgresql":
        pytest.skip("the ordering lock, and publishing in one statement, are PostgreSQL's")
    published: dict[str, int] = {}

    def waiting_publisher() -> None:
        try:
            published["waiting"] = notify.publish("broadcast", "waited for the lock").id
        finally:
            connections.close_all()

    with transaction.atomic():
        held = notify.publish("broadcast", "holds the lock until its commit").id
        thread = threading.Thread(target=waiting_publisher)
        thread.start()
        for _ in range(500):
            if _advisory_lock_waiters():
                break
            time.sleep(0.01)
        else:
            raise AssertionError("the second publisher never waited for the ordering lock")
        # Apart far enough that a cutoff falls between the two clock readings, whatever
        # the few milliseconds between computing it and pruning.
        time.sleep(0.5)
        later = notify.publish("broadcast", "published while the other waited").id
    thread.join()
    waiting = published["waiting"]
    newest = notify.publish("broadcast", "newest").id
    created = dict(Event.objects.values_list("id", "created"))
    assert held < later < waiting < newest
    assert created[waiting] < created[later], "created followed id order here"
    # A cutoff between the two: ``waiting`` is older than it, ``later`` (an id below) is not.
    cutoff = created[waiting] + (created[later] - created[waiting]) / 2
    max_age = (timezone.now() - cutoff).total_seconds()
    list(retention.prune(Retention(max_age, None), batch_size=100))
    assert stored() == [later, waiting, newest]


def test_the_newest_event_is_always_kept():
    ids = publish(3)
    backdate(ids, days=365)
    list(retention.prune(Retention(60, None), batch_size=100))
    assert stored() == [ids[-1]]


def test_dry_run_count_deletes_nothing():
    ids = publish(5)
    prune_pass = retention.plan(Retention(None, 1))
    assert prune_pass is not None
    assert retention.count(prune_pass) == 4
    assert stored() == ids


def test_each_batch_is_one_delete_statement():
    ids = publish(7)
    with CaptureQueriesContext(connection) as queries:
        sizes = list(retention.prune(Retention(None, 1), batch_size=2))
    assert sizes == [2, 2, 2]
    assert len(deletes(queries)) == 3
    assert all("LIMIT" not in sql.upper() for sql in deletes(queries))
    assert stored() == ids[-1:]


def test_events_published_during_a_pass_are_not_candidates():
    ids = publish(4)
    prune_pass = retention.plan(Retention(None, 1))
    assert prune_pass is not None
    later = publish(3)
    retention.delete_batch(prune_pass, 100)
    # The pass was planned when ids[-1] was the newest: it keeps that, and everything newer.
    assert stored() == [ids[-1], *later]


def test_publishing_prunes_one_batch_at_a_time(settings):
    settings.NOTIFY = {
        **settings.NOTIFY,
        "RETENTION": {"max_age": None, "max_events": 2},
        "PRUNE_BATCH": 3,
        "PRUNE_INTERVAL_SECONDS": 3600,
    }
    ids = [notify.publish("broadcast", n).id for n in range(10)]
    # Each publish pruned after it committed: the first found nothing to do and scheduled
    # the next pass an hour later, so the rest stayed.
    assert stored() == ids
    retention.reset_pruner()  # the hour has passed
    with CaptureQueriesContext(connection) as queries:
        newest = notify.publish("broadcast", "a").id
    # The pass started after this publish: the newest two of the eleven stay, and one batch
    # of three went (the oldest ones).
    assert len(deletes(queries)) == 1
    assert stored() == [*ids[3:], newest]
    more = [notify.publish("broadcast", n).id for n in range(3)]
    # Two more batches finished the pass fixed at ``newest``; the last found fewer than three
    # and ended it, so the events published meanwhile are all kept.
    assert stored() == [ids[-1], newest, *more]


def test_a_failed_prune_does_not_fail_the_publish(settings, monkeypatch, caplog):
    settings.NOTIFY = {**settings.NOTIFY, "RETENTION": {"max_age": 60, "max_events": None}}

    def broken(*args, **kwargs):
        from django.db import OperationalError

        raise OperationalError("database is locked")

    monkeypatch.setattr(retention, "plan", broken)
    event = notify.publish("broadcast", 1)
    assert stored() == [event.id]
    assert "pruning old events failed: database is locked" in caplog.text


def test_a_client_whose_cursor_was_pruned_gets_history_gone(server):
    ids = publish(6)
    with SSEClient(f"{server.url}/notify/stream/", last_event_id=str(ids[5])) as client:
        assert client.next().event == "notify.catchup-start"
        assert client.next().event == "notify.catchup-end"
    list(retention.prune(Retention(None, 2), batch_size=2))
    later = notify.publish("broadcast", "after the prune").id
    with SSEClient(f"{server.url}/notify/stream/", last_event_id=str(ids[1])) as client:
        reset = client.next()
        assert reset.event == "notify.reset"
        assert payload(reset) == {"reason": "history-gone", "oldest_id": ids[4]}
        assert reset.id == str(ids[4] - 1)
        got = client.until(lambda event: event.event == "notify.catchup-end")
    assert [int(event.id) for event in got if event.event == "message"] == [ids[4], ids[5], later]


def test_a_live_stream_whose_events_were_deleted_before_the_hub_read_them_ends(server):
    publish(1)  # the hub starts at a stored id
    with SSEClient(f"{server.url}/notify/stream/") as client:
        opened = client.next()
        assert opened.event == "notify.open"
        # A burst whose notices never came (their publisher could not reach Redis), deleted
        # but for the newest before the hub read them (in the same transaction: whenever the
        # hub reads next, they are gone). It cannot tell which channels they were on, and
        # ends the stream rather than skip them.
        with transaction.atomic():
            burst = [Event.objects.create(channel="broadcast", data=n) for n in range(5)]
            list(retention.prune(Retention(None, 1), batch_size=100))
        noticed = notify.publish("broadcast", "noticed")
        with pytest.raises(EOFError):
            client.next()
    with SSEClient(f"{server.url}/notify/stream/", last_event_id=opened.id) as client:
        reset = client.next()
        assert (reset.event, payload(reset)) == (
            "notify.reset",
            {"reason": "history-gone", "oldest_id": burst[-1].id},
        )
        got = client.until(lambda event: event.event == "notify.catchup-end")
    assert [int(event.id) for event in got if event.event == "message"] == [
        burst[-1].id,
        noticed.id,
    ]


def test_pruning_while_others_publish_loses_nothing_it_should_keep():
    old = publish(300)
    backdate(old, days=30)
    published: list[int] = []
    errors: list[BaseException] = []

    def publisher() -> None:
        try:
            for n in range(100):
                published.append(notify.publish("broadcast", {"during": n}).id)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    prune_pass = retention.plan(Retention(86400, None))
    assert prune_pass is not None
    thread = threading.Thread(target=publisher)
    thread.start()
    sizes = []
    while size := retention.delete_batch(prune_pass, 25):
        sizes.append(size)
    thread.join()
    assert errors == []
    assert sum(sizes) == 299 and all(size <= 25 for size in sizes)
    assert stored() == [old[-1], *published]
