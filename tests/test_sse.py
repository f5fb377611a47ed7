"""notify.sse: the exact bytes of everything a stream sends."""

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from notify import sse
from notify.stream import first_frame
from tests.sse_parser import SSEParser

CREATED = datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC)


def test_event_frame_exact_bytes():
    line = sse.envelope(42, "orders", "message", CREATED, '{"total": 3}')
    assert sse.event_frame(42, "message", line) == (
        b"id: 42\n"
        b"event: message\n"
        b'data: {"id": 42, "channel": "orders", "event": "message", '
        b'"created": "2026-11-22T10:00:00.123456Z", "data": {"total": 3}}\n'
        b"\n"
    )


def test_envelope_key_order_and_spacing():
    line = sse.envelope(42, "orders", "message", CREATED, "null")
    assert line == (
        '{"id": 42, "channel": "orders", "event": "message", '
        '"created": "2026-11-22T10:00:00.123456Z", "data": null}'
    )
    assert list(json.loads(line)) == ["id", "channel", "event", "created", "data"]


def test_envelope_carries_payload_json_verbatim():
    payload = sse.encode_json({"b": [1, 2.5, "x"], "a": None})
    line = sse.envelope(7, "user:42/inbox", "order.paid", CREATED, payload)
    assert line.endswith(', "data": {"a": null, "b": [1, 2.5, "x"]}}')
    assert json.loads(line)["channel"] == "user:42/inbox"
    assert json.loads(line)["event"] == "order.paid"


def test_frames_use_only_lf_and_no_bom():
    frame = sse.event_frame(1, "message", sse.envelope(1, "a", "message", CREATED, "1"))
    for data in (
        frame,
        sse.open_frame(5),
        sse.retry_frame(3000),
        sse.HEARTBEAT,
        sse.catchup_start_frame(1),
        sse.catchup_end_frame(1, 2),
        sse.reset_frame("history-gone", 3, 2),
    ):
        assert b"\r" not in data
        assert not data.startswith(b"\xef\xbb\xbf")
        assert data.endswith(b"\n\n")
        assert b"\n\n" not in data[:-2]  # exactly one block


@pytest.mark.parametrize(
    ("created", "expected"),
    [
        (datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC), "2026-11-22T10:00:00.123456Z"),
        # Microseconds are always six digits, also when zero or small.
        (datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC), "2026-11-22T10:00:00.000000Z"),
        (datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=UTC), "2026-01-02T03:04:05.000007Z"),
        # A non-UTC aware datetime is converted to UTC.
        (
            datetime(2026, 11, 22, 11, 30, 0, 500, tzinfo=timezone(timedelta(hours=1, minutes=30))),
            "2026-11-22T10:00:00.000500Z",
        ),
        (
            datetime(2026, 11, 21, 23, 0, 0, 1, tzinfo=timezone(timedelta(hours=-11))),
            "2026-11-22T10:00:00.000001Z",
        ),
        # ISO 8601's four-digit year (strftime's %Y gives "5" on glibc).
        (datetime(5, 1, 1, 0, 0, 0, 5, tzinfo=UTC), "0005-01-01T00:00:00.000005Z"),
    ],
)
def test_created_is_utc_with_microseconds(created, expected):
    assert sse.format_created(created) == expected
    assert f'"created": "{expected}"' in sse.envelope(1, "a", "message", created, "1")


def test_catchup_frames_carry_the_id_the_client_has_everything_through():
    # A client whose parser starts each connection with an empty ID buffer (as the WHATWG
    # rules say) must not lose its cursor to the first event of a resumed stream.
    assert sse.catchup_start_frame(17) == (
        b'id: 17\nevent: notify.catchup-start\ndata: {"after": 17}\n\n'
    )
    assert sse.catchup_end_frame(3, 20) == (
        b'id: 20\nevent: notify.catchup-end\ndata: {"count": 3, "last_id": 20}\n\n'
    )
    assert b"id:" not in sse.control_frame("notify.something", {"x": 1})


def test_open_frame_carries_id():
    assert sse.open_frame(42) == b'id: 42\nevent: notify.open\ndata: {"last_id": 42}\n\n'
    assert sse.open_frame(0) == b'id: 0\nevent: notify.open\ndata: {"last_id": 0}\n\n'


@pytest.mark.parametrize("reason", ["history-gone", "invalid-cursor", "unknown-cursor"])
def test_reset_frame_carries_id(reason):
    assert sse.reset_frame(reason, 10, 9) == (
        b"id: 9\nevent: notify.reset\n"
        b'data: {"oldest_id": 10, "reason": "' + reason.encode() + b'"}\n\n'
    )


def test_reset_frame_with_nothing_stored():
    assert sse.reset_frame("unknown-cursor", None, 0) == (
        b'id: 0\nevent: notify.reset\ndata: {"oldest_id": null, "reason": "unknown-cursor"}\n\n'
    )


def test_every_control_frame_carries_an_id():
    frames = {
        sse.OPEN: sse.open_frame(1),
        sse.RESET: sse.reset_frame("invalid-cursor", 1, 1),
        sse.CATCHUP_START: sse.catchup_start_frame(1),
        sse.CATCHUP_END: sse.catchup_end_frame(0, 1),
    }
    for name, frame in frames.items():
        assert name.startswith(sse.CONTROL_PREFIX)
        assert f"event: {name}\n".encode() in frame
        assert frame.startswith(b"id: 1\n")
        assert frame.count(b"id: ") == 1


def test_retry_frame():
    assert sse.retry_frame(3000) == b"retry: 3000\n\n"
    assert sse.retry_frame(250) == b"retry: 250\n\n"


def test_heartbeat_is_a_comment():
    assert sse.HEARTBEAT == b": heartbeat\n\n"
    assert sse.HEARTBEAT.startswith(b":")


def test_encode_json_is_one_ascii_line_with_sorted_keys():
    assert sse.encode_json({"b": 1, "a": {"d": 2, "c": 3}}) == '{"a": {"c": 3, "d": 2}, "b": 1}'
    assert sse.encode_json([1, "x", None, True, 2.5]) == '[1, "x", null, true, 2.5]'
    assert sse.encode_json("plain") == '"plain"'


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("café", '"caf\\u00e9"'),
        ("日本", '"\\u65e5\\u672c"'),
        ("😀", '"\\ud83d\\ude00"'),
        ("a\u2028b\u2029c", '"a\\u2028b\\u2029c"'),
        ("a\rb\nc", '"a\\rb\\nc"'),
        ("\x85\x0b\x0c\x1c\x1d\x1e", '"\\u0085\\u000b\\f\\u001c\\u001d\\u001e"'),
        ({"clé\n": "v\r"}, '{"cl\\u00e9\\n": "v\\r"}'),
    ],
)
def test_encode_json_escapes_everything_that_could_split_a_line(value, encoded):
    text = sse.encode_json(value)
    assert text == encoded
    assert text.isascii()
    assert len(text.splitlines()) == 1
    assert json.loads(text) == value


def test_payload_with_line_breaks_stays_one_data_line():
    nasty = {"text": "line1\nline2\r\nline3\u2028line4\u2029end\x85", "k\n": "data: forged"}
    payload = sse.encode_json(nasty)
    frame = sse.event_frame(9, "message", sse.envelope(9, "a", "message", CREATED, payload))
    frame.decode("ascii")  # ASCII only
    lines = frame.split(b"\n")
    assert lines == [b"id: 9", b"event: message", lines[2], b"", b""]
    assert lines[2].startswith(b"data: {")
    # Python's str.splitlines also splits on \x85, \u2028, ...: none of these survive.
    assert frame.decode("ascii").splitlines() == [line.decode() for line in lines[:4]]
    assert json.loads(lines[2][len(b"data: ") :])["data"] == nasty


def test_encode_json_refuses_nan():
    for value in (float("nan"), float("inf"), [float("-inf")]):
        with pytest.raises(ValueError):
            sse.encode_json(value)


def test_parse_frames_reads_back_what_a_stream_sends():
    line = sse.envelope(42, "orders", "message", CREATED, '{"a": "line\\u2028two"}')
    chunk = (
        sse.retry_frame(3000)
        + sse.open_frame(41)
        + sse.catchup_start_frame(41)
        + sse.event_frame(42, "message", line)
        + sse.HEARTBEAT
        + sse.catchup_end_frame(1, 42)
        + sse.reset_frame("history-gone", 50, 49)
    )
    assert sse.parse_frames(chunk) == [
        sse.Frame(41, sse.OPEN, '{"last_id": 41}'),
        sse.Frame(41, sse.CATCHUP_START, '{"after": 41}'),
        sse.Frame(42, "message", line),
        sse.Frame(42, sse.CATCHUP_END, '{"count": 1, "last_id": 42}'),
        sse.Frame(49, sse.RESET, '{"oldest_id": 50, "reason": "history-gone"}'),
    ]


def test_parse_frames_of_a_heartbeat_alone():
    assert sse.parse_frames(sse.HEARTBEAT) == []


def test_the_first_frame_carries_a_valid_cursor_as_its_id():
    assert first_frame(3000, None) == b"retry: 3000\n\n"
    assert first_frame(3000, "42") == b"retry: 3000\nid: 42\n\n"
    # An invalid cursor is never echoed (it gets a notify.reset with the newest id).
    assert first_frame(3000, "4\n2") == b"retry: 3000\n\n"
    assert first_frame(3000, "-1") == b"retry: 3000\n\n"
    # A parser that starts the connection with an empty ID buffer keeps the cursor.
    parser = SSEParser(last_event_id="42")
    assert parser.feed(first_frame(3000, "42")) == []
    assert parser.last_event_id == "42"
