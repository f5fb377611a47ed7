"""``manage.py prune_events [--older-than AGE] [--keep N] [--dry-run] [--batch-size N]``."""

from __future__ import annotations

import io
import subprocess
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notify.management.commands.prune_events import duration
from notify.models import Event
from tests.conftest import manage


def make_events(count: int, days_old: float = 0) -> list[int]:
    created = timezone.now() - timedelta(days=days_old)
    rows = Event.objects.bulk_create(
        [Event(channel="orders", data=n, created=created) for n in range(count)]
    )
    return [row.id for row in rows]


def kept() -> list[int]:
    return list(Event.objects.order_by("id").values_list("id", flat=True))


def prune(*args: str) -> str:
    out = io.StringIO()
    call_command("prune_events", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_keep():
    ids = make_events(10)
    assert prune("--keep", "3") == "deleted 7 events not among the newest 3\n"
    assert kept() == ids[-3:]
    assert prune("--keep", "3") == "deleted 0 events not among the newest 3\n"


@pytest.mark.django_db
@pytest.mark.parametrize("age", ["7d", "1w", "168h", "10080m", "604800s", "604800"])
def test_older_than(age):
    old = make_events(4, days_old=8)
    Event.objects.filter(pk=old[0]).update(created=timezone.now() - timedelta(days=400))
    recent = make_events(3, days_old=6.9)
    assert prune("--older-than", age) == "deleted 4 events older than 1w\n"
    assert kept() == recent


@pytest.mark.django_db
def test_either_limit_deletes():
    make_events(2, days_old=30)
    recent = make_events(5)
    assert prune("--older-than", "2w", "--keep", "4") == (
        "deleted 3 events older than 2w or not among the newest 4\n"
    )
    assert kept() == recent[1:]


@pytest.mark.django_db
def test_the_newest_event_is_always_kept():
    ids = make_events(5, days_old=10)
    assert prune("--older-than", "1d") == "deleted 4 events older than 1d\n"
    assert kept() == ids[-1:]
    assert prune("--older-than", "0") == "deleted 0 events older than 0s\n"
    assert kept() == ids[-1:]


@pytest.mark.django_db
def test_one_delete_per_batch():
    ids = make_events(26)
    out = io.StringIO()
    with CaptureQueriesContext(connection) as queries:
        call_command("prune_events", "--keep", "1", "--batch-size", "10", "-v", "2", stdout=out)
    deletes = [query["sql"] for query in queries if query["sql"].startswith("DELETE")]
    assert len(deletes) == 3
    assert out.getvalue() == (
        "batch 1: deleted 10 events\n"
        "batch 2: deleted 10 events\n"
        "batch 3: deleted 5 events\n"
        "deleted 25 events not among the newest 1\n"
    )
    assert kept() == ids[-1:]


@pytest.mark.django_db
def test_batch_size_defaults_to_the_prune_batch_setting(settings):
    make_events(7)
    out = io.StringIO()
    with override_settings(NOTIFY={**settings.NOTIFY, "PRUNE_BATCH": 4}):
        call_command("prune_events", "--keep", "1", "-v", "2", stdout=out)
    assert out.getvalue().splitlines()[:2] == [
        "batch 1: deleted 4 events",
        "batch 2: deleted 2 events",
    ]


@pytest.mark.django_db
def test_dry_run_deletes_nothing():
    ids = make_events(6, days_old=3)
    with CaptureQueriesContext(connection) as queries:
        printed = prune("--older-than", "2d", "--dry-run")
    assert printed == "would delete 5 events older than 2d\n"
    assert not [query for query in queries if query["sql"].startswith("DELETE")]
    assert kept() == ids


@pytest.mark.django_db
def test_applies_the_retention_setting_without_options(settings):
    make_events(3, days_old=2)
    recent = make_events(4)
    retention = {"max_age": 86400, "max_events": 3}
    with override_settings(NOTIFY={**settings.NOTIFY, "RETENTION": retention}):
        assert (
            prune("--dry-run") == "would delete 4 events older than 1d or not among the newest 3\n"
        )
        assert prune() == "deleted 4 events older than 1d or not among the newest 3\n"
    assert kept() == recent[1:]


@pytest.mark.django_db
def test_options_replace_the_retention_setting(settings):
    old = make_events(3, days_old=2)
    recent = make_events(4)
    retention = {"max_age": 86400, "max_events": None}
    with override_settings(NOTIFY={**settings.NOTIFY, "RETENTION": retention}):
        assert prune("--keep", "5") == "deleted 2 events not among the newest 5\n"
    assert kept() == [old[-1], *recent]


@pytest.mark.django_db
def test_nothing_to_prune_by(settings):
    ids = make_events(3, days_old=100)
    retention = {"max_age": None, "max_events": None}
    with override_settings(NOTIFY={**settings.NOTIFY, "RETENTION": retention}):
        assert prune() == (
            'NOTIFY["RETENTION"] keeps every event (max_age and max_events are None), so there '
            "is nothing to prune; give --older-than or --keep to prune anyway\n"
        )
        assert prune("-v", "0") == ""
    assert kept() == ids


@pytest.mark.django_db
def test_nothing_stored():
    assert prune("--keep", "1") == "deleted 0 events not among the newest 1\n"
    assert prune("--keep", "1", "--dry-run") == "would delete 0 events not among the newest 1\n"


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("30s", 30), ("15m", 900), ("12h", 43200), ("7d", 604800), ("2w", 1209600), ("45", 45)],
)
def test_duration(raw, seconds):
    assert duration(raw) == seconds


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--older-than", "7x"),
            'argument --older-than: "7x" is not a duration; use a whole number of seconds, or '
            "of minutes, hours, days or weeks with a unit: 30s, 15m, 12h, 7d, 2w",
        ),
        (("--older-than", "1.5h"), 'argument --older-than: "1.5h" is not a duration'),
        (("--older-than=-1d",), 'argument --older-than: "-1d" is not a duration'),
        (("--older-than", "d"), 'argument --older-than: "d" is not a duration'),
        (
            ("--older-than", "99999999999w"),
            'argument --older-than: "99999999999w" reaches back before the year 1',
        ),
        (("--keep", "0"), 'argument --keep: "0" is not a whole number of at least 1'),
        (("--keep", "many"), 'argument --keep: "many" is not a whole number of at least 1'),
        (("--batch-size", "0"), 'argument --batch-size: "0" is not a whole number of at least 1'),
    ],
)
def test_bad_values_are_command_errors(args, message):
    make_events(3, days_old=30)
    with pytest.raises(CommandError) as caught:
        prune(*args)
    assert str(caught.value).startswith(f"Error: {message}")
    assert Event.objects.count() == 3


def run_prune(*args: str) -> subprocess.CompletedProcess[str]:
    return manage("prune_events", *args)


@pytest.mark.django_db(transaction=True)
def test_in_a_real_process():
    ids = make_events(5, days_old=10)
    done = run_prune("--older-than", "1w", "--dry-run")
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        "would delete 4 events older than 1w\n",
        "",
    )
    done = run_prune("--older-than", "1w")
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        "deleted 4 events older than 1w\n",
        "",
    )
    assert kept() == ids[-1:]


@pytest.mark.django_db(transaction=True)
def test_nothing_to_prune_by_in_a_real_process():
    # tests/settings.py switches retention off.
    done = run_prune()
    assert done.returncode == 0
    assert done.stdout.startswith('NOTIFY["RETENTION"] keeps every event')


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("--older-than", "7x"), 'argument --older-than: "7x" is not a duration'),
        (("--keep", "0"), 'argument --keep: "0" is not a whole number of at least 1'),
    ],
)
def test_bad_values_in_a_real_process(args, reason):
    make_events(3, days_old=30)
    done = run_prune(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert reason in done.stderr
    assert "Traceback" not in done.stderr
    assert Event.objects.count() == 3
