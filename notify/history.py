"""Reading stored events back, as the SSE frames a stream sends. Synchronous: call these
through ``notify.db.db_call`` from async code."""

from __future__ import annotations

from collections.abc import Sequence

from django.db.models import Max, Min

from notify.broker import Notice
from notify.models import Event


def id_bounds() -> tuple[int | None, int | None]:
    """(oldest, newest) stored id, or (None, None) when nothing is stored."""
    bounds = Event.objects.aggregate(oldest=Min("id"), newest=Max("id"))
    return bounds["oldest"], bounds["newest"]


def _notices(events: Sequence[Event]) -> list[Notice]:
    return [Notice(event.id, event.channel, event.sse_frame()) for event in events]


def replay(channels: Sequence[str], after: int, limit: int) -> list[Notice]:
    """Up to ``limit`` events of ``channels`` with id > ``after``, in id order."""
    query = Event.objects.filter(channel__in=channels, id__gt=after).order_by("id")
    return _notices(query[:limit])


def events_after(after: int, limit: int, until: int | None = None) -> list[Notice]:
    """Up to ``limit`` events of every channel with ``after`` < id (≤ ``until``), in id order."""
    query = Event.objects.filter(id__gt=after)
    if until is not None:
        query = query.filter(id__lte=until)
    return _notices(query.order_by("id")[:limit])
