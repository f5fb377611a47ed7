"""A Server-Sent Events parser written to the WHATWG rules, for tests.

https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation

It reads any SSE stream, not only notify's: the point is to see notify's bytes the way a
browser's ``EventSource`` sees them. Bytes may arrive in chunks cut anywhere (inside a UTF-8
sequence, between the CR and LF of a CRLF); ``feed()`` returns the events dispatched so far.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field

_LINE_END = re.compile("\r\n|\r|\n")


@dataclass(frozen=True)
class Dispatched:
    """One event as ``EventSource`` dispatches it."""

    type: str
    data: str
    last_event_id: str


@dataclass
class SSEParser:
    #: The last event ID string, set from the ID buffer at each dispatch, as the spec says.
    last_event_id: str = ""
    #: The reconnection time set by the last valid ``retry:`` field, if any.
    retry: int | None = None
    #: Comment lines seen, without their leading colon.
    comments: list[str] = field(default_factory=list)
    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace")
    )
    _buffer: str = ""
    _started: bool = False
    # A CR ended the last line; an LF right after it belongs to that line ending.
    _after_cr: bool = False
    _data: str = ""
    _type: str = ""
    _id: str = ""

    def feed(self, chunk: bytes) -> list[Dispatched]:
        """Read ``chunk``; return the events it completes."""
        return self._read(self._decoder.decode(chunk))

    def close(self) -> list[Dispatched]:
        """The end of the stream: an incomplete last line or event is discarded."""
        self._read(self._decoder.decode(b"", final=True))
        return []

    def _read(self, text: str) -> list[Dispatched]:
        if not self._started and text:
            # One leading U+FEFF (a BOM) is ignored, once, at the start of the stream.
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._after_cr and text:
            # The LF of a CRLF whose CR ended the previous chunk.
            self._after_cr = False
            text = text.removeprefix("\n")
        if not text:
            return []
        # Whole lines at a time (the soak harness reads millions of events with this):
        # CRLF, CR and LF each end a line; the text after the last line end is kept.
        *lines, rest = _LINE_END.split(self._buffer + text)
        self._buffer = rest
        self._after_cr = text.endswith("\r")
        events: list[Dispatched] = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> Dispatched | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            self.comments.append(line[1:])
            return None
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        self._field(name, value)
        return None

    def _field(self, name: str, value: str) -> None:
        if name == "event":
            self._type = value
        elif name == "data":
            self._data += value + "\n"
        elif name == "id":
            if "\x00" not in value:
                self._id = value
        elif name == "retry":
            if value and all("0" <= char <= "9" for char in value):
                self.retry = int(value)
        # Any other field name is ignored.

    def _dispatch(self) -> Dispatched | None:
        # The ID buffer is not reset: it carries over to the next events.
        self.last_event_id = self._id
        data, event_type = self._data, self._type
        self._data = self._type = ""
        if data == "":
            return None
        return Dispatched(event_type or "message", data.removesuffix("\n"), self.last_event_id)


def parse(stream: bytes) -> list[Dispatched]:
    """Every event dispatched by the complete stream ``stream``."""
    parser = SSEParser()
    events = parser.feed(stream)
    parser.close()
    return events
