"""Retention: deleting old events in batches, from ``prune_events`` and after publishing.

An event goes once it is older than ``max_age`` seconds or is not among the newest
``max_events``. The newest event is always kept: it is the high-water mark that tells a
stream a resuming client's cursor is merely old (``history-gone``) rather than from a
database it has never seen (``unknown-cursor``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

from django.db import DatabaseError, router
from django.db.models import Max, Q
from django.utils import timezone

from notify.conf import Retention, notify_settings
from notify.models import Event

logger = logging.getLogger("notify.retention")


@dataclass(frozen=True)
class PrunePass:
    """What one pruning pass deletes, fixed when the pass starts so that events published
    during it are never candidates."""

    stale: Q
    using: str


def plan(retention: Retention, using: str | None = None) -> PrunePass | None:
    """The pass for ``retention`` now, or None when it would delete nothing."""
    using = using or router.db_for_write(Event)
    events = Event.objects.using(using)
    newest = events.aggregate(newest=Max("id"))["newest"]
    if newest is None:
        return None
    limits = Q()
    if retention.max_age is not None:
        limits |= Q(created__lt=timezone.now() - timedelta(seconds=retention.max_age))
    if retention.max_events is not None:
        first_dropped = events.order_by("-id").values_list("id", flat=True)[retention.max_events :][
            :1
        ]
        boundary = next(iter(first_dropped), None)
        if boundary is not None:
            limits |= Q(id__lte=boundary)
    if not limits:
        return None
    return PrunePass(limits & Q(id__lt=newest), using)


def count(prune_pass: PrunePass) -> int:
    """How many events the pass would delete (for ``--dry-run``)."""
    return Event.objects.using(prune_pass.using).filter(prune_pass.stale).count()


def delete_batch(prune_pass: PrunePass, size: int) -> int:
    """Delete up to ``size`` of the pass's oldest events in one DELETE; returns how many."""
    events = Event.objects.using(prune_pass.using).filter(prune_pass.stale)
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
