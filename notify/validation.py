"""Validation of what may be published or subscribed to, with errors that say what is wrong."""

from __future__ import annotations

import json
import re
import unicodedata
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError

from notify.conf import notify_settings
from notify.control import RESERVED_PREFIX
from notify.sse import CONTROL_PREFIX, encode_json

CHANNEL_CHARS = "[A-Za-z0-9_.:@/-]"
EVENT_CHARS = "[A-Za-z0-9_.:-]"
MAX_CHANNEL_LENGTH = 200
MAX_EVENT_LENGTH = 64
MAX_CURSOR_DIGITS = 20
# Lists and objects nested in one another, at most.
MAX_DEPTH = 500

_CHANNEL_BAD = re.compile(r"[^A-Za-z0-9_.:@/-]")
_EVENT_BAD = re.compile(r"[^A-Za-z0-9_.:-]")
_CURSOR = re.compile(rf"[0-9]{{1,{MAX_CURSOR_DIGITS}}}")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _describe(char: str) -> str:
    if char == " ":
        return "a space"
    if char.isprintable():
        return f'"{char}"'
    if unicodedata.category(char) == "Cs":
        return f"U+{ord(char):04X} (a lone surrogate)"
    name = unicodedata.name(char, "") or "a control character"
    return f"U+{ord(char):04X} ({name})"


def _validate_name(value: Any, what: str, bad: re.Pattern[str], chars: str, limit: int) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a string, not {type(value).__name__}", code="type")
    if not value:
        raise ValidationError(
            f"{what} is empty; use 1 to {limit} characters of {chars}", code="empty"
        )
    if len(value) > limit:
        raise ValidationError(
            f"{what} is {len(value)} characters long; the limit is {limit}", code="too_long"
        )
    found = bad.search(value)
    if found:
        shown = value if value.isprintable() else value.encode("unicode_escape").decode("ascii")
        raise ValidationError(
            f'{what} "{shown}" contains {_describe(found.group())}; use only {chars}',
            code="bad_character",
        )
    return value


def validate_channel(channel: Any) -> str:
    channel = _validate_name(channel, "channel", _CHANNEL_BAD, CHANNEL_CHARS, MAX_CHANNEL_LENGTH)
    # Projects build paths, URLs and keys from channel names: a "." or ".." segment would
    # let "../x" stand for another name there.
    if any(segment in (".", "..") for segment in channel.split("/")):
        raise ValidationError(
            f'channel "{channel}" has a "." or ".." segment between slashes; '
            "name channels without them",
            code="dot_segment",
        )
    if channel.startswith(RESERVED_PREFIX):
        # notify's own records (revocations) travel on these: nobody publishes or reads them.
        raise ValidationError(
            f'channel "{channel}" starts with "{RESERVED_PREFIX}", which is reserved for '
            "notify's own records; name it otherwise",
            code="reserved",
        )
    return channel


def validate_event_type(event: Any) -> str:
    event = _validate_name(event, "event type", _EVENT_BAD, EVENT_CHARS, MAX_EVENT_LENGTH)
    if event.startswith(CONTROL_PREFIX):
        raise ValidationError(
            f'event type "{event}" starts with "{CONTROL_PREFIX}", which is reserved for '
            "notify's control events",
            code="reserved",
        )
    return event


def _find_unstorable(value: Any) -> str | None:
    """The first NUL or surrogate code point in any string of ``value``, keys included.

    Raises ValidationError when ``value`` nests more than ``MAX_DEPTH`` lists and objects:
    deeper data may pass ``json.dumps`` here yet hit the recursion limit when Django stores
    it or when a server reads it back (which would stall every stream of that process).
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            found = _UNSTORABLE.search(item)
            if found:
                return found.group()
        elif isinstance(item, dict | list | tuple):
            if depth >= MAX_DEPTH:
                raise ValidationError(
                    f"data is nested more than {MAX_DEPTH} levels deep", code="too_deep"
                )
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return None


class NotAJSONConstant(ValueError):
    """``json.loads`` met NaN, Infinity or -Infinity: Python reads them, JSON has no such
    values."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is not a JSON value")
        self.name = name


def refuse_json_constant(name: str) -> Any:
    """A ``parse_constant`` for ``json.loads`` that raises ``NotAJSONConstant``."""
    raise NotAJSONConstant(name)


def _parse_float(text: str) -> float | int:
    # PostgreSQL's jsonb keeps numbers as numeric and prints them without an exponent:
    # 1e+16 comes back as 10000000000000000 and -0.0 as 0.0. Normalise floats the same way
    # so that the bytes replayed from any database are the bytes sent live.
    if "e+" in text:  # Python writes floats of 1e16 and more this way; they are integers
        return int(Decimal(text))
    value = float(text)
    return 0.0 if value == 0 else value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # {1: "a", "1": "b"} encodes to two "1" keys; decoding would silently keep one.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValidationError(
                f"data has the key {json.dumps(key)} twice once keys are converted to strings",
                code="duplicate_key",
            )
        result[key] = value
    return result


def encode_payload(data: Any) -> tuple[Any, str]:
    """Check ``data`` and encode it once: returns (the value to store, its JSON text).

    The stored value is the JSON text decoded again, so what is replayed from the database
    is exactly what was broadcast live (tuples become lists, int keys become strings).
    """
    try:
        # Keys are sorted only once they are strings: {1: "a", "b": 2} can't be sorted as is.
        text = json.dumps(data, ensure_ascii=True, allow_nan=False)
    except ValueError as exc:
        if "Out of range float" in str(exc):
            raise ValidationError(
                "data contains NaN or Infinity, which JSON cannot represent", code="nan"
            ) from exc
        raise ValidationError(f"data is not JSON-serializable: {exc}", code="not_json") from exc
    except TypeError as exc:
        raise ValidationError(f"data is not JSON-serializable: {exc}", code="not_json") from exc
    except RecursionError as exc:
        raise ValidationError("data is nested too deeply to encode", code="too_deep") from exc
    # Decoding and encoding again normalises the value (int keys to strings, tuples to
    # lists) so that the bytes sent live are the bytes rebuilt from the database later.
    normalized = json.loads(text, parse_float=_parse_float, object_pairs_hook=_unique_keys)
    text = encode_json(normalized)
    limit = notify_settings.MAX_PAYLOAD_BYTES
    if len(text) > limit:
        raise ValidationError(
            f"data is {len(text):,} bytes encoded; "
            f'the limit is {limit:,} (NOTIFY["MAX_PAYLOAD_BYTES"])',
            code="too_large",
        )
    bad = _find_unstorable(normalized)
    if bad == "\x00":
        raise ValidationError(
            "data contains a NUL character (\\u0000), which the database cannot store",
            code="nul",
        )
    if bad is not None:
        raise ValidationError(
            f"data contains a lone surrogate (U+{ord(bad):04X}), which is not valid Unicode",
            code="surrogate",
        )
    return normalized, text


def parse_cursor(raw: str) -> int | None:
    """The cursor as an int, or None when it is not a non-negative integer of ≤ 20 digits."""
    return int(raw) if _CURSOR.fullmatch(raw) else None
