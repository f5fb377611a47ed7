"""What a stream writes, per transport: SSE bytes, or WebSocket text messages.

``notify.stream.EventStream`` decides what to send (which events, which control events, in
which order); a ``Wire`` turns that into what its transport writes. Both wires hand every
stream the same objects for an event (its SSE frame, or its envelope as a string), built
once per process. No Django imports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

from notify import sse, websocket

if TYPE_CHECKING:
    from notify.broker.base import Notice

Chunk = TypeVar("Chunk")


class Wire(Generic[Chunk]):
    """How one transport writes a stream; ``Chunk`` is what one write takes."""

    #: What an idle stream writes now and then to show it is alive; None: nothing.
    heartbeat: Chunk | None = None

    def events(self, notices: Sequence[Notice]) -> Chunk:
        raise NotImplementedError

    def open(self, last_id: int) -> Chunk:
        raise NotImplementedError

    def reset(self, reason: str, oldest_id: int | None, cursor: int) -> Chunk:
        raise NotImplementedError

    def catchup_start(self, after: int) -> Chunk:
        raise NotImplementedError

    def catchup_end(self, count: int, last_id: int) -> Chunk:
        raise NotImplementedError

    def retry(self, milliseconds: int) -> Chunk:
        """The reconnection delay a stream ended for a shutdown is given."""
        raise NotImplementedError


class SSEWire(Wire[bytes]):
    """``text/event-stream`` bytes: several events are one write."""

    heartbeat = sse.HEARTBEAT

    def events(self, notices: Sequence[Notice]) -> bytes:
        if len(notices) == 1:
            return notices[0].frame
        return b"".join(notice.frame for notice in notices)

    def open(self, last_id: int) -> bytes:
        return sse.open_frame(last_id)

    def reset(self, reason: str, oldest_id: int | None, cursor: int) -> bytes:
        return sse.reset_frame(reason, oldest_id, cursor)

    def catchup_start(self, after: int) -> bytes:
        return sse.catchup_start_frame(after)

    def catchup_end(self, count: int, last_id: int) -> bytes:
        return sse.catchup_end_frame(count, last_id)

    def retry(self, milliseconds: int) -> bytes:
        # No id: needed, this connection has carried the client's cursor already.
        return sse.retry_frame(milliseconds)


class WebSocketWire(Wire[list[str]]):
    """WebSocket text messages (``notify.websocket``), one per event: a write is a list."""

    def events(self, notices: Sequence[Notice]) -> list[str]:
        return [notice.message for notice in notices]

    def open(self, last_id: int) -> list[str]:
        return [websocket.open_message(last_id)]

    def reset(self, reason: str, oldest_id: int | None, cursor: int) -> list[str]:
        return [websocket.reset_message(reason, oldest_id, cursor)]

    def catchup_start(self, after: int) -> list[str]:
        return [websocket.catchup_start_message(after)]

    def catchup_end(self, count: int, last_id: int) -> list[str]:
        return [websocket.catchup_end_message(count, last_id)]

    def retry(self, milliseconds: int) -> list[str]:
        return [websocket.retry_message(milliseconds)]


SSE = SSEWire()
WEBSOCKET = WebSocketWire()
