"""Publishing: store the event, then broadcast it once the transaction commits."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.db import connections, router, transaction

from notify.broker import encode_notice, get_broker
from notify.models import Event
from notify.validation import encode_payload, validate_channel, validate_event_type

# Key of the PostgreSQL advisory lock that serialises inserts (ASCII "notify").
ORDERING_LOCK_KEY = 0x6E6F74696679


def publish(channel: str, data: Any = None, *, event: str = "message") -> Event:
    """Store an event on ``channel`` and broadcast it to every open stream of that channel.

    ``data`` is any JSON-serializable value. Raises ``django.core.exceptions.ValidationError``
    (nothing stored) when the channel, type or data is not acceptable. Inside
    ``transaction.atomic()`` the broadcast waits for the commit, and a rollback sends nothing.

    On PostgreSQL, publishers take a transaction-level lock so that events commit in id
    order: a stream that has seen id N can then never be handed an id below N later. The
    lock is held until the outermost transaction ends, so keep publishing transactions short.
    """
    channel = validate_channel(channel)
    event = validate_event_type(event)
    value, payload_json = encode_payload(data)
    alias = router.db_for_write(Event)
    with transaction.atomic(using=alias):
        _serialize_commits(alias)
        stored = Event.objects.using(alias).create(channel=channel, event=event, data=value)
        notice = encode_notice(stored.id, channel, stored.sse_frame(payload_json))
        transaction.on_commit(lambda: get_broker().publish(notice), using=alias)
    return stored


async def apublish(channel: str, data: Any = None, *, event: str = "message") -> Event:
    """``publish`` for async code."""
    return await sync_to_async(publish)(channel, data, event=event)


def _serialize_commits(alias: str) -> None:
    connection = connections[alias]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ORDERING_LOCK_KEY])
    # SQLite allows one writer at a time, so its commits already follow id order.
