"""The WebSocket message format of notify. No Django imports: this is the protocol.

A WebSocket stream carries the same stream as the SSE one, one JSON text message per SSE
event:

- an event is its envelope, exactly the SSE ``data:`` line::

      {"id": 42, "channel": "orders", "event": "message", "created": "...Z", "data": ...}

- a control event is an object with a ``type`` (``notify.open``, ``notify.catchup-start``,
  ``notify.catchup-end``, ``notify.reset``), the id the client then has everything through
  as ``id`` (the SSE ``id:`` line), and the fields of the SSE event's data::

      {"after": 41, "id": 41, "type": "notify.catchup-start"}

- ``{"retry": 3000, "type": "notify.retry"}`` is SSE's ``retry:``, the delay to wait before
  reconnecting: the first message of every connection (for a stream refused with an HTTP
  ``Retry-After`` on the SSE side, that delay), and the last before a close for a
  shutdown (a short random one);
- ``{"code": 4403, "reason": "...", "type": "notify.error"}`` comes just before a close that
  refuses the stream: the reason, for servers that drop the close frame's (daphne does).

Events have an ``event`` key and no ``type``; every other message has a ``type``. The
server sends no heartbeat message: the WebSocket server pings the client (daphne every 20
seconds), which keeps proxies from closing an idle connection.
"""

from __future__ import annotations

from typing import Any, Final

from notify.sse import CATCHUP_END, CATCHUP_START, OPEN, RESET, encode_json

RETRY: Final = "notify.retry"
ERROR: Final = "notify.error"

# Close codes. 4000-4999 are the application's (RFC 6455, 7.4.2); 44xx and 45xx mirror the
# HTTP status the SSE stream answers in the same case.
#: The stream ended (its MAX_STREAM_SECONDS are over, the server's fan-out restarted, or
#: events were deleted by retention before they could reach it): reconnect after the retry
#: delay, from the cursor (the stream then says what is gone).
ENDED: Final = 4000
#: ``notify.revoke`` closed the user's streams: reconnect, to be authorized again.
REVOKED: Final = 4001
#: The request is malformed (a channel name, too many channels): do not reconnect.
BAD_REQUEST: Final = 4400
#: Not allowed to read a channel: do not reconnect.
FORBIDDEN: Final = 4403
#: The client did not read fast enough (MAX_BUFFER events waited): reconnect from the cursor.
TOO_SLOW: Final = 4408
#: Too many open streams for the user or address: reconnect after the ``notify.retry``
#: delay sent first (the SSE answer's ``Retry-After``).
TOO_MANY: Final = 4429
#: Streams are unavailable (the database cannot be read): reconnect after the
#: ``notify.retry`` delay sent first, with a backoff.
UNAVAILABLE: Final = 4503
#: The server is shutting down: reconnect after the delay of the ``notify.retry`` sent just
#: before, to another process. (RFC 6455's 1012 "Service Restart" says the same, but
#: servers may keep 1000-2999 for themselves: autobahn, under daphne, refuses to send them.)
SHUTDOWN: Final = 4012
#: The server failed (RFC 6455's 1011, likewise): reconnect with a backoff.
INTERNAL_ERROR: Final = 4500

#: The close code of a stream the hub closed, by ``Subscriber.closed`` reason. A client that
#: left ("client-gone") is sent nothing.
CLOSE_CODES: Final = {
    "too-slow": TOO_SLOW,
    "shutdown": SHUTDOWN,
    "revoked": REVOKED,
    "lifetime": ENDED,
    "hub-closed": ENDED,
    "history-gone": ENDED,
}

#: The close code of a stream refused with an HTTP status on the SSE side.
REFUSAL_CODES: Final = {400: BAD_REQUEST, 403: FORBIDDEN, 429: TOO_MANY, 503: UNAVAILABLE}

# A close frame's reason is at most 123 bytes of UTF-8 (RFC 6455, 5.5: 125 with the code).
MAX_REASON_BYTES: Final = 123


def control_message(event: str, data: dict[str, Any], event_id: int | None) -> str:
    return encode_json({**data, "type": event, "id": event_id})


def open_message(last_id: int) -> str:
    return control_message(OPEN, {"last_id": last_id}, last_id)


def catchup_start_message(after: int) -> str:
    return control_message(CATCHUP_START, {"after": after}, after)


def catchup_end_message(count: int, last_id: int) -> str:
    return control_message(CATCHUP_END, {"count": count, "last_id": last_id}, last_id)


def reset_message(reason: str, oldest_id: int | None, cursor: int) -> str:
    return control_message(RESET, {"oldest_id": oldest_id, "reason": reason}, cursor)


def retry_message(milliseconds: int) -> str:
    return encode_json({"type": RETRY, "retry": milliseconds})


def error_message(code: int, reason: str) -> str:
    return encode_json({"type": ERROR, "code": code, "reason": reason})


def close_reason(reason: str) -> str:
    """``reason`` cut to fit a close frame (whole characters; the full text goes in the
    ``notify.error`` message)."""
    encoded = reason.encode("utf-8")
    if len(encoded) <= MAX_REASON_BYTES:
        return reason
    return encoded[: MAX_REASON_BYTES - 3].decode("utf-8", "ignore") + "..."
