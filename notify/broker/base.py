"""The broker interface: how one process tells the others that events were committed.

A broker carries *notices*: the complete SSE bytes of one event behind a short header
line, built once by the publisher. Each server process holds ONE subscription (see
``notify.hub``) and fans the notices out in memory to its streams.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Final, NamedTuple


class Resync:
    """Yielded by ``Broker.subscribe`` when notices may have been missed (on first subscribing
    and after every reconnect): the hub then reads what it missed from the database."""

    def __repr__(self) -> str:
        return "RESYNC"


RESYNC: Final = Resync()


class Notice(NamedTuple):
    id: int
    channel: str
    frame: bytes


def encode_notice(event_id: int, channel: str, frame: bytes) -> bytes:
    return b"%d %s\n" % (event_id, channel.encode("ascii")) + frame


def decode_notice(message: bytes) -> Notice:
    """Raises ValueError on a malformed message."""
    header, _, frame = message.partition(b"\n")
    raw_id, _, channel = header.partition(b" ")
    if not frame or not channel:
        raise ValueError(f"malformed notice {message[:80]!r}")
    return Notice(int(raw_id), channel.decode("ascii"), frame)


class Broker(abc.ABC):
    #: True when notices from other processes do not arrive through ``subscribe`` and the hub
    #: must watch the database for new ids (the embedded broker).
    polls: bool = False

    @property
    def connected(self) -> bool:
        """False while the subscription is down; the hub then watches the database."""
        return True

    @abc.abstractmethod
    def publish(self, notice: bytes) -> None:
        """Send a notice to every subscribed process. Called after commit from any thread;
        never raises (the event is stored, and subscribers recover it from the database)."""

    def publish_many(self, notices: list[bytes]) -> None:
        """Send several notices in order; brokers that can batch them override this."""
        for notice in notices:
            self.publish(notice)

    @abc.abstractmethod
    def subscribe(self) -> AsyncIterator[bytes | Resync]:
        """Notices as they arrive; ``RESYNC`` first and after every reconnect. Runs until
        cancelled, reconnecting by itself."""

    async def report_presence(  # noqa: B027 (optional: a broker that cannot count ignores it)
        self, key: str, counts: Mapping[str, int], ttl: float
    ) -> None:
        """Record that the process ``key`` has ``counts`` open streams per channel, for
        ``ttl`` seconds (a process that dies stops counting when it expires). Called by each
        hub every ``PRESENCE_SECONDS`` from its event loop."""

    def stream_counts(self, channels: Sequence[str]) -> dict[str, int] | None:
        """Open streams per channel over every process that reports, or None when this
        broker cannot tell."""
        return None

    async def aclose(self) -> None:  # noqa: B027 (optional hook: most brokers hold nothing)
        """Release connections held by ``subscribe``'s event loop."""
