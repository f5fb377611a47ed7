"""Reading stored events back, as the SSE frames a stream sends. Synchronous: call these
through ``notify.db.db_call`` from async code.

Every read here decides what a client is sent, so it goes to the database the events are
written to (``router.db_for_write``), never to ``db_for_read``: a read replica that lags
behind would have a stream or the hub take an id committed on the primary, and not yet
copied, for a rolled-back one and skip it for good.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from django.db import connections, router
from django.db.models import BigIntegerField, Max, Min, QuerySet
from django.db.models.expressions import RawSQL

from notify.broker import Notice
from notify.models import Event
from notify.sse import encode_json, stored_event_frame


def _events() -> QuerySet[Event]:
    """Every stored event, on the database events are written to (see above)."""
    return Event.objects.using(router.db_for_write(Event))


def id_bounds() -> tuple[int | None, int | None]:
    """(oldest, newest) stored id, or (None, None) when nothing is stored."""
    bounds = _events().aggregate(oldest=Min("id"), newest=Max("id"))
    return bounds["oldest"], bounds["newest"]


# Streams read rows as tuples of these, not as model instances: building an instance per
# row was a third of a reconnect's CPU (docs/benchmarks.md, the reconnect storm).
_FIELDS = ("id", "channel", "event", "created", "data")


def _notices(rows: Iterable[tuple[Any, ...]]) -> list[Notice]:
    """Notices of rows of ``_FIELDS`` (and possibly more columns after them)."""
    return [
        Notice(
            row[0], row[1], stored_event_frame(row[0], row[1], row[2], row[3], encode_json(row[4]))
        )
        for row in rows
    ]


class Start(NamedTuple):
    """What a stream resuming from a cursor reads first."""

    oldest: int | None
    newest: int | None
    #: The first batch of its replay: up to ``limit`` events after the cursor.
    rows: list[Notice]


def _bound(aggregate: str, alias: str) -> RawSQL:
    """``(SELECT MIN(id) FROM notify_event)`` (or MAX) as a column of a query on the database
    ``alias``. RawSQL rather than a Subquery of a queryset: Django compiles those anew for
    every query, which cost more than running the whole statement."""
    quote_name = connections[alias].ops.quote_name
    table = quote_name(Event._meta.db_table)
    return RawSQL(f"SELECT {aggregate}(id) FROM {table}", (), output_field=BigIntegerField())


def start(channels: Sequence[str], after: int, limit: int, until: int) -> Start:
    """The stored id bounds and the first replay batch after ``after`` (up to ``until``), in
    one query when there is anything to replay (a reconnect storm is then one query per
    client); a second query reads the bounds when there is not. Both come from one snapshot
    of the table."""
    events = _events()
    query = (
        events.filter(channel__in=channels, id__gt=after, id__lte=until)
        .order_by("id")
        .annotate(notify_oldest=_bound("MIN", events.db), notify_newest=_bound("MAX", events.db))
        .values_list(*_FIELDS, "notify_oldest", "notify_newest")
    )
    rows = list(query[:limit])
    if not rows:
        return Start(*id_bounds(), [])
    first = rows[0]
    return Start(first[-2], first[-1], _notices(rows))


class Batch(NamedTuple):
    """Events read after a position, and the oldest stored id when they were read: the ids
    after the position and below ``oldest`` were deleted by retention (or never committed)."""

    #: None when nothing is stored, or when nothing was read and no bound was needed.
    oldest: int | None
    rows: list[Notice]


def _read_batch(query: QuerySet[Event], limit: int) -> Batch:
    """Up to ``limit`` rows of ``query`` (in id order) and the oldest stored id, read in the
    same statement, so that a batch never hides a prune that ran before it. Nothing read:
    ``oldest`` is None."""
    oldest = _bound("MIN", query.db)
    rows = list(query.annotate(notify_oldest=oldest).values_list(*_FIELDS, "notify_oldest")[:limit])
    if not rows:
        return Batch(None, [])
    return Batch(rows[0][-1], _notices(rows))


def replay(channels: Sequence[str], after: int, limit: int, until: int) -> Batch:
    """Up to ``limit`` events of ``channels`` with ``after`` < id ≤ ``until``, in id order,
    and the oldest stored id: in one query, and a second for the oldest id when there is
    nothing to replay (retention may have deleted what was left of these channels)."""
    query = _events().filter(channel__in=channels, id__gt=after, id__lte=until)
    batch = _read_batch(query.order_by("id"), limit)
    if not batch.rows:
        return Batch(id_bounds()[0], [])
    return batch


def events_after(after: int, limit: int, until: int | None = None) -> Batch:
    """Up to ``limit`` events of every channel with ``after`` < id (≤ ``until``), in id order,
    and the oldest stored id, in one query. When nothing is read, the oldest id is read (a
    second query) only with ``until``: without it, nothing read means that no id above
    ``after`` is stored, and retention, which always keeps the newest event
    (``notify.retention``), cannot have deleted one."""
    query = _events().filter(id__gt=after)
    if until is not None:
        query = query.filter(id__lte=until)
    batch = _read_batch(query.order_by("id"), limit)
    if not batch.rows and until is not None:
        return Batch(id_bounds()[0], [])
    return batch


class Page(NamedTuple):
    """One page of a channel's history, newest first."""

    events: list[Event]
    #: Pass as ``before`` to get the next (older) page; None on the last page.
    next_before: int | None
    #: The newest stored id of any channel when the page was read. Opening the stream with
    #: this as its cursor continues exactly where the page left off.
    newest: int | None


def page(channels: Sequence[str], before: int | None, limit: int) -> Page:
    """Up to ``limit`` events of ``channels`` with id < ``before``, newest first."""
    # Read the high-water mark first. Commits follow id order (see notify.api), so every
    # event up to it is visible now and the page plus a stream from ``newest`` leave no gap.
    events = _events()
    newest = events.aggregate(newest=Max("id"))["newest"]
    if newest is None:
        return Page([], None, None)
    upper = newest if before is None else min(before - 1, newest)
    query = events.filter(channel__in=channels, id__lte=upper).order_by("-id")
    rows = list(query[: limit + 1])
    if len(rows) <= limit:
        return Page(rows, None, newest)
    return Page(rows[:limit], rows[limit - 1].id, newest)
