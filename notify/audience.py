"""Who is listening: how many streams are open per channel, across every server process.

Each process's hub reports its counts to the broker every ``PRESENCE_SECONDS``, and the
report expires after three intervals, so the figures lag by up to one interval and a killed
process stops counting within three.

(Not named ``notify.presence``: that name is the function ``notify.presence(channel)``, and
a submodule of that name would replace it on the package once imported.)
"""

from __future__ import annotations

from collections.abc import Sequence

from notify.broker import get_broker
from notify.validation import validate_channel


def stream_counts(channels: Sequence[str]) -> dict[str, int] | None:
    """Open streams per channel of ``channels``, or None when the broker cannot tell."""
    return get_broker().stream_counts(list(dict.fromkeys(channels)))


def counts_or_unknown(channels: Sequence[str]) -> dict[str, int | None]:
    """The open streams per channel of ``channels``, each None when the broker cannot tell
    (never 0 for "unknown")."""
    counts = stream_counts(channels)
    return {channel: None if counts is None else counts[channel] for channel in channels}


def presence(channel: str) -> int | None:
    """Open streams on ``channel`` now, over every server process; None when the broker
    cannot tell (Redis unreachable, or a custom broker that does not count). Raises
    ``ValidationError`` for an invalid channel name, which no stream can be open on.
    Blocks while it reads Redis (one round trip, at most ``notify.broker.redis.READ_TIMEOUT``):
    call it through ``sync_to_async`` from async code."""
    name = validate_channel(channel)
    return counts_or_unknown([name])[name]
