"""Retention: deleting old events in batches, from ``prune_events`` and after publishing.

Pruning only ever deletes a prefix of the ids: every id below a bound, never an id above one
it keeps. Streams rely on it: a cursor (or the hub's last delivered id) at or above the
oldest stored id minus one then has every event after it still stored, or never committed;
one below it is told ``history-gone``. Comparing with ``MIN(id)`` is sound only so.

An event goes once it, and every event before it, is older than ``max_age`` seconds, or once
it is not among the newest ``max_events``. ``created`` is the publishing process's clock,
read on PostgreSQL before the publisher waits for the ordering lock (``notify.api``), and
publishers on other hosts have other clocks: it may run against id order. An event that
looks old after one that does not is kept until that one goes too (for longer than
``max_age``, by as much as the clocks or the waits differ), rather than leave a hole above the
oldest id.

The newest event is always kept: it is the high-water mark that tells a stream a resuming
client's cursor is merely old (``history-gone``) rather than from a database it has never
seen (``unknown-cursor``), and the hub's gap reads count on it (``history.events_after``).

Deleting events in other ways (the admin) can leave a hole that no stream reports.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

from django.db import DatabaseError, router
from django.db.models import Max, Min, QuerySet
from django.utils import timezone

from notify.conf import Retention, notify_settings
from notify.control import REVOCATION
from notify.models import Event

logger = logging.getLogger("notify.retention")


@dataclass(frozen=True)
class PrunePass:
    """What one pruning pass deletes: every id below ``below``. Fixed when the pass starts,
    so that events published during it are never candidates."""

    below: int
    using: str


def plan(retention: Retention, using: str | None = None) -> PrunePass | None:
    """The pass for ``retention`` now, or None when it would delete nothing."""
    using = using or router.db_for_write(Event)
    events = Event.objects.using(using)
    newest = events.aggregate(newest=Max("id"))["newest"]
    if newest is None:
        return None
    # Each limit's bound: it deletes every id below, none above. Together they delete
    # what either one would: the longer prefix.
    bounds = []
    if retention.max_age is not None:
        cutoff = timezone.now() - timedelta(seconds=retention.max_age)
        # PostgreSQL and SQLite read the primary key in id order and stop at the first recent
        # event (PostgreSQL takes the index on ``created`` instead when few are recent): a
        # pass reads the rows it deletes, and one more, not the table.
        first_recent = events.filter(created__gte=cutoff).aggregate(first=Min("id"))["first"]
        bounds.append(newest if first_recent is None else first_recent)
    if retention.max_events is not None:
        # Revocations (notify.control) do not count: logging in and out stores them, and
        # any user could otherwise push the site's events out of their history.
        kept = events.exclude(channel=REVOCATION).order_by("-id").values_list("id", flat=True)
        first_dropped = kept[retention.max_events :][:1]
        boundary = next(iter(first_dropped), None)
        if boundary is not None:
            bounds.append(boundary + 1)
    if not bounds:
        return None
    return PrunePass(min(max(bounds), newest), using)


def _stale(prune_pass: PrunePass) -> QuerySet[Event]:
    return Event.objects.using(prune_pass.using).filter(id__lt=prune_pass.below)


def count(prune_pass: PrunePass) -> int:
    """How many events the pass would delete (for ``--dry-run``)."""
    return _stale(prune_pass).count()


def delete_batch(prune_pass: PrunePass, size: int) -> int:
    """Delete up to ``size`` of the pass's oldest events in one DELETE; returns how many."""
    events = _stale(prune_pass)
    ids = list(events.order_by("id").values_list("id", flat=True)[:size])
    if not ids:
        return 0
    # Bounding by id turns the batch into one range DELETE on the primary key (no LIMIT in
    # DELETE is needed, which not every database has).
    batch = events.filter(id__lte=ids[-1])
    deleted, _ = batch.delete()
    return deleted


def prune(retention: Retention, batch_size: int, using: str | None = None) -> Iterator[int]:
    """Run a whole pass, yielding the number deleted by each batch. Each batch is its own
    short transaction, so publishers wait at most one batch."""
    prune_pass = plan(retention, using)
    if prune_pass is None:
        return
    while True:
        deleted = delete_batch(prune_pass, batch_size)
        if deleted:
            yield deleted
        if deleted < batch_size:
            return


class _Pruner:
    """Pruning as a side effect of publishing: at most one pass per interval per process,
    advanced by one batch after each commit, so no publish waits for more than one batch."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next_prune_passat = 0.0
        self._pass: PrunePass | None = None

    def reset(self) -> None:
        with self._lock:
            self._next_prune_passat = 0.0
            self._pass = None

    def step(self, using: str) -> None:
        retention = notify_settings.RETENTION
        if retention.max_age is None and retention.max_events is None:
            return
        now = time.monotonic()
        if self._pass is None and now < self._next_prune_passat:
            return
        if not self._lock.acquire(blocking=False):
            return  # another thread of this process is pruning right now
        try:
            self._advance(retention, using, now)
        except DatabaseError as exc:
            logger.warning("notify: pruning old events failed: %s", exc)
            self._pass = None
            self._next_prune_passat = now + notify_settings.PRUNE_INTERVAL_SECONDS
        finally:
            self._lock.release()

    def _advance(self, retention: Retention, using: str, now: float) -> None:
        if self._pass is None:
            self._pass = plan(retention, using)
        size = notify_settings.PRUNE_BATCH
        if self._pass is None or delete_batch(self._pass, size) < size:
            self._pass = None
            self._next_prune_passat = now + notify_settings.PRUNE_INTERVAL_SECONDS


_pruner = _Pruner()


def prune_if_due(using: str) -> None:
    """Called after each publish commits. Never raises: a failed prune is logged and retried
    after the interval, and the publish it follows is already committed."""
    _pruner.step(using)


def reset_pruner() -> None:
    _pruner.reset()
