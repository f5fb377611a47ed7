"""Control records in the event log: what notify itself stores among the events, on channels
that no client may publish to or read (``notify.``-prefixed; ``notify.validation``).

A revocation (``notify.revoke``) is one of them. It is stored in the event log, in the
caller's transaction, rather than sent beside it: every hub then meets it at its place in id
order, through Redis or through the database alike. So a hub closes the streams it revokes
before it hands them any event published after it, and a revocation is never lost to a
broker that is down or still subscribing. No Django imports: the hub reads these.
"""

from __future__ import annotations

import json

#: Channels of this prefix are notify's own: publishing to or streaming them is refused.
RESERVED_PREFIX = "notify."
#: The channel, and event type, of a revocation; its data is ``{"users": [pk, ...]}``.
REVOCATION = "notify.revoke"


def revoked_users(message: str) -> list[str]:
    """The pks (as ``str``) that a revocation's envelope (its SSE ``data:`` line) names.
    Raises ValueError when it names none, or is not a revocation's envelope."""
    try:
        users = json.loads(message)["data"]["users"]
    except (TypeError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a revocation: {message[:80]!r}") from exc
    if not isinstance(users, list) or not all(isinstance(pk, str) for pk in users):
        raise ValueError(f"not a revocation: {message[:80]!r}")
    return users
