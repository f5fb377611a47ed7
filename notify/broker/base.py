"""The broker interface: how one process tells the others that events were committed.

A broker carries *notices*: the complete SSE bytes of one event behind a short header
line, built once by the publisher. Each server process holds ONE subscription (see
``notify.hub``) and fans the notices out in memory to its streams.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Final

from notify.sse import data_line

logger = logging.getLogger("notify.broker")


class Resync:
    """Yielded by ``Broker.subscribe`` when notices may have been missed (on first subscribing
    and after every reconnect): the hub then reads what it missed from the database."""

    def __repr__(self) -> str:
        return "RESYNC"


RESYNC: Final = Resync()


class Notice:
    """One event as the hub hands it to streams: its id, its channel and its SSE bytes,
    the same objects for every stream of the process."""

    __slots__ = ("_message", "channel", "frame", "id")

    def __init__(self, id: int, channel: str, frame: bytes) -> None:
        self.id = id
        self.channel = channel
        self.frame = frame
        self._message: str | None = None

    @property
    def message(self) -> str:
        """The event as a WebSocket text message: the envelope of its ``data:`` line.
        Cut from the frame once, by the first WebSocket stream that sends the event; every
        other one sends the same string."""
        message = self._message
        if message is None:
            message = self._message = data_line(self.frame)
        return message

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Notice):
            return NotImplemented
        return (self.id, self.channel, self.frame) == (other.id, other.channel, other.frame)

    def __hash__(self) -> int:
        return hash((self.id, self.channel, self.frame))

    def __repr__(self) -> str:
        return f"Notice(id={self.id!r}, channel={self.channel!r}, frame={self.frame!r})"


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
        cancelled, reconnecting by itself. (Revocations are events: ``notify.control``.)"""

    async def ping(self) -> None:  # noqa: B027 (optional, see the docstring)
        """Return once the broker answered; raise (any exception) when it cannot be reached.
        For ``/notify/health/``, which gives up after a short time (``asyncio.timeout``).
        The default answers at once: right for a broker that holds no connection (the
        embedded one)."""

    async def report_presence(  # noqa: B027 (optional: a broker that cannot count ignores it)
        self, key: str, counts: Mapping[str, int], ttl: float
    ) -> None:
        """Record that the process ``key`` has ``counts`` open streams per channel, for
        ``ttl`` seconds (a process that dies stops counting when it expires). Called by each
        hub every ``PRESENCE_SECONDS`` from its event loop."""

    def stream_counts(self, channels: Sequence[str]) -> dict[str, int] | None:
        """Open streams per channel over every process that reports, or None when this
        broker cannot tell. Called by requests (the presence API, the dashboard, the admin),
        which wait for it: a broker that asks over the network bounds that wait."""
        return None

    async def write_stream_owners(
        self,
        key: str,
        counts: Mapping[str, int],
        ttl: float,
        *,
        seq: int,
        replace: bool,
        others_of: Sequence[str],
    ) -> dict[str, int] | None:
        """Record that the process ``key`` holds ``counts[name]`` streams of each owner
        ``name`` (``user:<pk>`` or ``ip:<address>``, see ``notify.limits``; 0 forgets it),
        for ``ttl`` seconds; with ``replace``, ``counts`` is the process's whole record. Then
        return the streams of each owner of ``others_of`` that every *other* process holds.

        Writing and reading are one atomic step, so that of two processes counting a stream
        at the same moment at least one sees the other's. A write whose ``seq`` is not above
        the last one applied for ``key`` is ignored: one that timed out may arrive after a
        newer one. Called by one task per process (``notify.limits``), which bounds the
        wait. None when this broker does not share counts: each process counts its own."""
        return None

    async def aclose(self) -> None:  # noqa: B027 (optional hook: most brokers hold nothing)
        """Release connections held by ``subscribe``'s event loop."""
