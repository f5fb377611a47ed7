"""notify: realtime notifications for Django over Server-Sent Events."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from notify.models import Event

__all__ = ["apublish", "presence", "publish", "revoke"]


def publish(channel: str, data: Any = None, *, event: str = "message") -> Event:
    from notify.api import publish as _publish

    return _publish(channel, data, event=event)


async def apublish(channel: str, data: Any = None, *, event: str = "message") -> Event:
    from notify.api import apublish as _apublish

    return await _apublish(channel, data, event=event)


def revoke(user: Any) -> Event:
    from notify.revocation import revoke as _revoke

    return _revoke(user)


def presence(channel: str) -> int | None:
    from notify.audience import presence as _presence

    return _presence(channel)


publish.__doc__ = "Store an event and broadcast it after commit; see ``notify.api.publish``."
apublish.__doc__ = "Async ``publish``; see ``notify.api.apublish``."
revoke.__doc__ = "Close the user's open streams in every process; see ``notify.revocation.revoke``."
presence.__doc__ = (
    "Open streams on a channel over every process; None when the broker cannot tell. "
    "See ``notify.audience.presence``."
)
