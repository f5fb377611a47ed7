"""Property tests of the wire format: whatever is published, a browser reads back exactly it.

Events are built as publishing builds them (``notify.api.prepare``, then
``Event.sse_frame``), without the database, and read back with ``tests.sse_parser``, a
parser written to the WHATWG rules, fed in chunks cut anywhere.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from notify import sse
from notify.api import prepare
from notify.models import Event
from notify.validation import MAX_CHANNEL_LENGTH, MAX_EVENT_LENGTH
from tests.sse_parser import Dispatched, SSEParser, parse

# Line breaks of every kind a parser or a JavaScript engine might honour.
LINE_BREAKS = ["\n", "\r", "\r\n", "\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c"]
# Text that looks like SSE fields and events, to try to forge them.
FORGERIES = ["\n\nid: 1\nevent: x\ndata: y\n\n", "\rdata: z\r\r", ":", "\ufeff", "data:", "id:"]

text = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40),
    st.lists(st.sampled_from(LINE_BREAKS + FORGERIES + ["a", "\u00e9", "\U0001f600"])).map("".join),
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(text, children, max_size=5),
    max_leaves=30,
)
channels = st.from_regex(rf"[A-Za-z0-9_.:@/-]{{1,{MAX_CHANNEL_LENGTH}}}", fullmatch=True).filter(
    lambda channel: not {".", ".."} & set(channel.split("/"))
)
event_types = st.from_regex(rf"[A-Za-z0-9_.:-]{{1,{MAX_EVENT_LENGTH}}}", fullmatch=True).filter(
    lambda event: not event.startswith(sse.CONTROL_PREFIX)
)
ids = st.integers(min_value=1, max_value=10**19)
CREATED = datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC)


def frame(event_id: int, channel: str, event: str, data: Any) -> tuple[bytes, Any]:
    """The bytes publishing sends for this event, and the data a client should read."""
    prepared = prepare(channel, data, event=event)
    row = Event(id=event_id, channel=prepared.channel, event=prepared.event, created=CREATED)
    return row.sse_frame(prepared.payload_json), prepared.data


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(stream) + 1) for cut in cuts})
    bounds = [0, *points, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def parse_chunks(chunks: list[bytes]) -> list[Dispatched]:
    parser = SSEParser()
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    parser.close()
    return events


def assert_is(got: Dispatched, event_id: int, channel: str, event: str, data: Any) -> None:
    assert got.type == event
    assert got.last_event_id == str(event_id)
    envelope = json.loads(got.data)
    assert envelope == {
        "id": event_id,
        "channel": channel,
        "event": event,
        "created": "2026-11-22T10:00:00.123456Z",
        "data": data,
    }


@settings(max_examples=300)
@given(ids, channels, event_types, json_values)
def test_one_frame_is_exactly_one_event(event_id, channel, event, data):
    raw, expected = frame(event_id, channel, event, data)
    assert raw.isascii()
    assert b"\r" not in raw and raw.endswith(b"\n\n") and raw.count(b"\n\n") == 1
    (got,) = parse(raw)
    assert_is(got, event_id, channel, event, expected)


@settings(max_examples=150)
@given(
    st.lists(st.tuples(channels, event_types, json_values), min_size=1, max_size=6),
    st.lists(st.integers(min_value=0), max_size=40),
)
def test_a_stream_cut_anywhere_reads_back_exactly(events, cuts):
    stream = sse.retry_frame(3000) + sse.open_frame(0)
    expected = [("notify.open", "0", {"last_id": 0})]
    for event_id, (channel, event, data) in enumerate(events, start=1):
        raw, value = frame(event_id, channel, event, data)
        stream += raw + sse.HEARTBEAT
        expected.append((event, str(event_id), value))
    # notify.catchup-end carries the id it reports.
    stream += sse.catchup_end_frame(len(events), len(events))
    expected.append(
        (sse.CATCHUP_END, str(len(events)), {"count": len(events), "last_id": len(events)})
    )
    got = parse_chunks(split(stream, cuts))
    assert len(got) == len(expected)
    for dispatched, (event, event_id, value) in zip(got, expected, strict=False):
        assert dispatched.type == event and dispatched.last_event_id == event_id
        data = json.loads(dispatched.data)
        assert (data if event.startswith("notify.") else data["data"]) == value


@settings(max_examples=100)
@given(st.tuples(channels, event_types, json_values), st.sampled_from(["\n", "\r", "\r\n"]))
def test_one_byte_at_a_time_with_any_line_ending(event, line_ending):
    """What a server behind a proxy that rewrites line endings would send: the same events."""
    raw, value = frame(7, *event)
    stream = b"\xef\xbb\xbf" + (sse.retry_frame(1000) + raw).replace(b"\n", line_ending.encode())
    (got,) = parse_chunks([stream[i : i + 1] for i in range(len(stream))])
    assert_is(got, 7, event[0], event[1], value)


# -- the parser itself follows the WHATWG rules ---------------------------------------------


def test_parser_line_endings_bom_and_comments():
    stream = b"\xef\xbb\xbf: hi\r\ndata: a\r\rdata:b\ndata\n\n:\xef\xbb\xbfx\n"
    assert parse(stream) == [Dispatched("message", "a", ""), Dispatched("message", "b\n", "")]


def test_parser_only_one_bom_is_ignored():
    assert parse(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\ndata: y\n\n") == [
        Dispatched("message", "y", "")
    ]


def test_parser_field_rules():
    parser = SSEParser()
    got = parser.feed(
        b"retry: 10\n\nretry: x1\n\nid: 5\nevent: e\ndata:  two spaces\nfoo: bar\n\n"
        b"id: 6\x00\ndata: kept id\n\nid\ndata\n\n"
    )
    assert parser.retry == 10
    # An id holding NUL is ignored; "data" alone appends an empty line; "id" alone empties
    # the last event id; unknown fields are ignored; only one space after the colon goes.
    assert got == [
        Dispatched("e", " two spaces", "5"),
        Dispatched("message", "kept id", "5"),
        Dispatched("message", "", ""),
    ]


def test_parser_event_without_data_is_not_dispatched_and_tail_is_discarded():
    parser = SSEParser()
    assert parser.feed(b"event: x\n\nid: 3\n\ndata: cut") == []
    assert parser.close() == []
    # The id of a block without data still sets the last event id.
    assert parser.last_event_id == "3"


def test_parser_cr_lf_split_across_chunks_is_one_line_ending():
    assert parse_chunks([b"data: a\r", b"\n", b"\r", b"\ndata: b\r\n\r\n"]) == [
        Dispatched("message", "a", ""),
        Dispatched("message", "b", ""),
    ]
