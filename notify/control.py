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
#: The channel, and event type, of a revocation; its data is ``{"users": [pk, ...]}``
#: (every stream of those users) and/or ``{"sessions": [digest, ...]}`` (the streams let in
#: by those sessions, named by ``notify.authorization.session_digest``).
REVOCATION = "notify.revoke"


def revoked(message: str) -> tuple[list[str], list[str]]:
    """The user pks and the session digests that a revocation's envelope (its SSE ``data:``
    line) names. Raises ValueError when it is not a revocation's envelope."""
    try:
        data = json.loads(message)["data"]
        users, sessions = data.get("users", []), data.get("sessions", [])
    except (TypeError, KeyError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a revocation: {message[:80]!r}") from exc
    for names in (users, sessions):
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ValueError(f"not a revocation: {message[:80]!r}")
    return users, sessions
