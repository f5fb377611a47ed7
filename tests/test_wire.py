"""notify.wire and notify.websocket: what each transport writes for the same stream."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from notify import sse, websocket
from notify.broker import Notice, decode_notice, encode_notice
from notify.wire import SSE, WEBSOCKET

CREATED = datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC)


def notice(event_id: int, data: str = '{"n": 1}', event: str = "message") -> Notice:
    frame = sse.stored_event_frame(event_id, "orders", event, CREATED, data)
    return decode_notice(encode_notice(event_id, "orders", frame))


def test_an_event_message_is_the_envelope_of_its_sse_frame():
    one = notice(42, '{"text": "\\u2028 \\u00e9", "x": [1, null]}', "order.paid")
    (message,) = WEBSOCKET.events([one])
    assert message == sse.parse_frames(one.frame)[0].data
    assert json.loads(message) == {
        "id": 42,
        "channel": "orders",
        "event": "order.paid",
        "created": "2026-11-22T10:00:00.123456Z",
        "data": {"text": "\u2028 \u00e9", "x": [1, None]},
    }


def test_the_message_is_cut_once_and_shared_by_every_stream():
    one = notice(7)
    first = WEBSOCKET.events([one])[0]
    assert WEBSOCKET.events([one])[0] is first


def test_a_data_line_that_looks_like_a_field_is_not_mistaken_for_one():
    one = notice(8, '{"s": "\\ndata: x"}')
    assert json.loads(one.message)["data"] == {"s": "\ndata: x"}


def test_sse_writes_several_events_as_one_chunk_and_one_as_its_own_bytes():
    a, b = notice(1), notice(2)
    assert SSE.events([a]) is a.frame
    assert SSE.events([a, b]) == a.frame + b.frame
    assert WEBSOCKET.events([a, b]) == [a.message, b.message]


def test_control_events_carry_the_same_fields_on_both_wires():
    pairs = [
        (SSE.open(5), WEBSOCKET.open(5)),
        (SSE.catchup_start(3), WEBSOCKET.catchup_start(3)),
        (SSE.catchup_end(2, 5), WEBSOCKET.catchup_end(2, 5)),
        (SSE.reset("history-gone", 4, 3), WEBSOCKET.reset("history-gone", 4, 3)),
        (SSE.reset("unknown-cursor", None, 0), WEBSOCKET.reset("unknown-cursor", None, 0)),
    ]
    for frame, (message,) in pairs:
        (parsed,) = sse.parse_frames(frame)
        assert json.loads(message) == {
            **json.loads(parsed.data),
            "type": parsed.event,
            "id": parsed.id,
        }


def test_retry_and_error_messages():
    assert SSE.retry(1500) == b"retry: 1500\n\n"
    assert WEBSOCKET.retry(1500) == ['{"retry": 1500, "type": "notify.retry"}']
    assert json.loads(websocket.error_message(4403, 'not allowed to read channel "x"')) == {
        "type": "notify.error",
        "code": 4403,
        "reason": 'not allowed to read channel "x"',
    }


def test_only_sse_has_a_heartbeat_message():
    assert SSE.heartbeat == b": heartbeat\n\n"
    assert WEBSOCKET.heartbeat is None


def test_close_codes_are_the_applications_and_say_what_to_do():
    codes = [
        websocket.ENDED,
        websocket.REVOKED,
        websocket.BAD_REQUEST,
        websocket.FORBIDDEN,
        websocket.TOO_SLOW,
        websocket.TOO_MANY,
        websocket.UNAVAILABLE,
        websocket.SHUTDOWN,
        websocket.INTERNAL_ERROR,
    ]
    assert len(set(codes)) == len(codes)
    # 1000-2999 are the protocol's: servers (autobahn under daphne) refuse to send them.
    assert all(4000 <= code <= 4999 for code in codes)
    assert set(websocket.CLOSE_CODES) == {
        "too-slow",
        "shutdown",
        "revoked",
        "lifetime",
        "hub-closed",
        "history-gone",
    }
    assert websocket.REFUSAL_CODES == {400: 4400, 403: 4403, 429: 4429, 503: 4503}


def test_a_close_reason_is_cut_to_fit_a_close_frame():
    reason = "é" * 100
    cut = websocket.close_reason(reason)
    assert len(cut.encode()) <= websocket.MAX_REASON_BYTES
    assert cut.endswith("...") and reason.startswith(cut[:-3])
    assert websocket.close_reason("short") == "short"
