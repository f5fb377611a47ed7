"""Closing a user's open streams in every server process: ``notify.revoke``.

A stream is authorized once, when it opens. When what a user may read changes (they log out,
leave a group, lose staff status), ``revoke`` closes their open streams; each client then
reconnects and its channels are checked again.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver

from notify.broker import get_broker


def revoke(user: Any) -> None:
    """Close every open stream of ``user`` (a Django user) in every server process, within
    moments: the broker carries the revocation to each process's hub (with the embedded
    broker, only to the streams of the calling process). The streams end and their clients
    reconnect, to be authorized again.

    Only streams whose user was looked up are found: with the ``allow_all`` policy a stream
    reads no session, so it has no user to revoke. A revocation sent while Redis is down is
    lost. Never raises for the broker's sake."""
    get_broker().revoke(str(user.pk))


@receiver(user_logged_out)
def _revoke_on_logout(*, user: Any = None, **kwargs: Any) -> None:
    # None when nobody was logged in to the session.
    if user is not None:
        revoke(user)
