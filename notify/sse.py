"""The Server-Sent Events wire format of notify. No Django imports: this is the protocol.

Every event notify sends looks exactly like this (``\\n`` line endings, no BOM)::

    id: 42
    event: message
    data: {"id": 42, "channel": "orders", "event": "message", "created": "...Z", "data": ...}

The ``data`` line is one line of JSON with every non-ASCII character escaped, so no payload
can contain a line break (not even U+2028) and forge a field. Control events are named
``notify.*`` and carry an ``id:`` too: the id the client then has everything through.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, NamedTuple

CONTROL_PREFIX = "notify."
OPEN = "notify.open"
CATCHUP_START = "notify.catchup-start"
CATCHUP_END = "notify.catchup-end"
RESET = "notify.reset"

HEARTBEAT = b": heartbeat\n\n"


def encode_json(value: Any) -> str:
    """One line of JSON, ASCII only, keys sorted.

    Sorted keys make the bytes of an event the same whether it is built from the Python
    value at publish time or from the database on replay (PostgreSQL's jsonb reorders keys).
    """
    return json.dumps(value, ensure_ascii=True, sort_keys=True, allow_nan=False)


def format_created(created: datetime) -> str:
    """``2026-11-22T10:00:00.123456Z``: UTC, always with microseconds."""
    # Not strftime: isoformat is faster (this runs for every event published and replayed)
    # and pads years below 1000 to four digits, as glibc's %Y does not. In UTC its offset
    # is always "+00:00".
    return created.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def envelope(event_id: int, channel: str, event: str, created: datetime, payload_json: str) -> str:
    """The JSON object carried on the ``data:`` line of an event, in a fixed key order."""
    return (
        f'{{"id": {event_id}, "channel": {json.dumps(channel)}, "event": {json.dumps(event)}, '
        f'"created": "{format_created(created)}", "data": {payload_json}}}'
    )


# Where an event frame's created time is found: its key, and how far into the frame it can
# be. The envelope puts ``created`` before ``data``, after an id, a type and a channel of
# bounded length (436 bytes at most), so a search that stops here is cheap whatever the
# size of the payload.
_CREATED_KEY = b'"created": "'
_CREATED_WITHIN = 512


def created_timestamp(frame: bytes) -> float | None:
    """The ``created`` time of an event's frame (as ``event_frame`` builds it from
    ``envelope``) as a POSIX timestamp; None when the frame carries none."""
    start = frame.find(_CREATED_KEY, 0, _CREATED_WITHIN)
    if start < 0:
        return None
    start += len(_CREATED_KEY)
    try:
        # 27 characters: 2026-11-22T10:00:00.123456Z
        return datetime.fromisoformat(frame[start : start + 27].decode("ascii")).timestamp()
    except ValueError:
        return None


def event_frame(event_id: int, event: str, data_line: str) -> bytes:
    """The complete bytes of one event; ``event`` and ``data_line`` must hold no line breaks."""
    return f"id: {event_id}\nevent: {event}\ndata: {data_line}\n\n".encode("ascii")


_DATA_FIELD = b"\ndata: "


def data_line(frame: bytes) -> str:
    """The ``data:`` line of an event's frame (as ``event_frame`` builds it): its envelope."""
    start = frame.index(_DATA_FIELD) + len(_DATA_FIELD)
    # The frame is ASCII, and ends with the line's "\n" and the blank line's.
    return frame[start:-2].decode("ascii")


def stored_event_frame(
    event_id: int, channel: str, event: str, created: datetime, payload_json: str
) -> bytes:
    """The frame of a stored event: its ``id:``, ``event:``, and its envelope as data."""
    return event_frame(event_id, event, envelope(event_id, channel, event, created, payload_json))


def control_frame(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    id_line = "" if event_id is None else f"id: {event_id}\n"
    return f"{id_line}event: {event}\ndata: {encode_json(data)}\n\n".encode("ascii")


def retry_frame(milliseconds: int, last_id: int | None = None) -> bytes:
    """The stream's first bytes: the reconnection delay, and the client's cursor when it has
    one (a block without data dispatches no event). The WHATWG parsing rules start each
    connection's last-event-ID buffer empty and copy it to ``lastEventId`` at every blank
    line, this one's included: without the ``id:``, a client that follows them to the letter
    would forget its cursor here, and resume from nothing if cut before the next event."""
    id_line = "" if last_id is None else f"id: {last_id}\n"
    return f"retry: {milliseconds}\n{id_line}\n".encode("ascii")


def open_frame(last_id: int) -> bytes:
    return control_frame(OPEN, {"last_id": last_id}, event_id=last_id)


# The catch-up frames carry the id the client has everything through. The WHATWG parsing
# rules start each connection's last-event-ID buffer empty, so an id-less first event would
# set a client's Last-Event-ID to "" and a connection cut before the next event would then
# resume with no cursor (found by the soak harness, whose parser follows those rules).
def catchup_start_frame(after: int) -> bytes:
    return control_frame(CATCHUP_START, {"after": after}, event_id=after)


def catchup_end_frame(count: int, last_id: int) -> bytes:
    return control_frame(CATCHUP_END, {"count": count, "last_id": last_id}, event_id=last_id)


def reset_frame(reason: str, oldest_id: int | None, cursor: int) -> bytes:
    return control_frame(RESET, {"oldest_id": oldest_id, "reason": reason}, event_id=cursor)


class Frame(NamedTuple):
    """One event read back from a stream's bytes."""

    #: The ``id:`` line; None for the control events that carry none.
    id: int | None
    event: str
    #: The ``data:`` line: the envelope of an event, the JSON object of a control event.
    data: str


def parse_frames(chunk: bytes) -> list[Frame]:
    """The events in ``chunk``: whole frames, as ``notify.stream.EventStream.body()`` yields
    them (this reads notify's own frames, not SSE in general). Comments (heartbeats) and the
    ``retry:`` block dispatch no event and are skipped."""
    frames = []
    for block in chunk.split(b"\n\n"):
        fields = dict(
            line.decode("ascii").split(": ", 1)
            for line in block.split(b"\n")
            if line and not line.startswith(b":")
        )
        if "event" in fields:
            raw_id = fields.get("id")
            frames.append(
                Frame(None if raw_id is None else int(raw_id), fields["event"], fields["data"])
            )
    return frames
