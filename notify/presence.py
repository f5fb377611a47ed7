"""How many streams are open per channel, across every server process.

Each process's hub reports its counts to the broker every ``PRESENCE_SECONDS``, and the
report expires after three intervals, so the figures lag by up to one interval and a killed
process stops counting within three.
"""

from __future__ import annotations

from collections.abc import Sequence

from notify.broker import get_broker


def stream_counts(channels: Sequence[str]) -> dict[str, int] | None:
    """Open streams per channel of ``channels``, or None when the broker cannot tell."""
    return get_broker().stream_counts(list(dict.fromkeys(channels)))
