"""notify.validation: what may be published or subscribed to, and errors that say what is wrong."""

import json

import pytest
from django.core.exceptions import ValidationError
from django.test import override_settings

from notify.conf import DEFAULTS
from notify.sse import encode_json
from notify.validation import (
    MAX_DEPTH,
    encode_payload,
    parse_cursor,
    validate_channel,
    validate_event_type,
)


def error_of(call, *args):
    with pytest.raises(ValidationError) as caught:
        call(*args)
    error = caught.value
    assert len(error.messages) == 1
    assert "\n" not in error.messages[0]
    return error.code, error.messages[0]


# -- channels -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "channel",
    [
        "a",
        "broadcast",
        "user:42",
        "Orders_2026.eu-west@shop/inbox",
        "x" * 200,
        "0",
        "/",
        "a..b/c.d/...",
        "a:b@c/d-e_f.g",
    ],
)
def test_valid_channels(channel):
    assert validate_channel(channel) == channel


@pytest.mark.parametrize("channel", ["..", ".", "../x", "a/../b", "a/.", "./a", "x/.."])
def test_channels_with_dot_segments(channel):
    code, message = error_of(validate_channel, channel)
    assert code == "dot_segment"
    assert message == (
        f'channel "{channel}" has a "." or ".." segment between slashes; name channels without them'
    )


def test_empty_channel():
    code, message = error_of(validate_channel, "")
    assert code == "empty"
    assert message == "channel is empty; use 1 to 200 characters of [A-Za-z0-9_.:@/-]"


def test_channel_too_long():
    code, message = error_of(validate_channel, "x" * 201)
    assert code == "too_long"
    assert message == "channel is 201 characters long; the limit is 200"


@pytest.mark.parametrize(
    ("channel", "described"),
    [
        ("a b", "a space"),
        ("café", '"é"'),
        ("a+b", '"+"'),
        ("a#b", '"#"'),
        ("a?b", '"?"'),
        ("a,b", '","'),
        ("日本", '"日"'),
        ("a\nb", "U+000A"),
        ("a\rb", "U+000D"),
        ("a\x00b", "U+0000"),
        ("a\tb", "U+0009"),
        ("a\u2028b", "U+2028 (LINE SEPARATOR)"),
        # Unicode digits and letters are not in [A-Za-z0-9].
        ("\u0661", '"\u0661"'),
        ("\uff41", '"\uff41"'),
    ],
)
def test_channel_with_a_bad_character(channel, described):
    code, message = error_of(validate_channel, channel)
    assert code == "bad_character"
    assert described in message
    assert message.endswith("use only [A-Za-z0-9_.:@/-]")
    assert message.isprintable()


def test_channel_error_shows_the_channel_and_escapes_control_characters():
    _, message = error_of(validate_channel, "orders now")
    assert message == 'channel "orders now" contains a space; use only [A-Za-z0-9_.:@/-]'
    _, message = error_of(validate_channel, "a\nb")
    assert message == (
        'channel "a\\nb" contains U+000A (a control character); use only [A-Za-z0-9_.:@/-]'
    )


@pytest.mark.parametrize("channel", [None, 42, b"abc", ["a"]])
def test_channel_must_be_a_string(channel):
    code, message = error_of(validate_channel, channel)
    assert code == "type"
    assert message == f"channel must be a string, not {type(channel).__name__}"


# -- event types ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        "message",
        "m",
        "order.paid",
        "a:b-c_d.e",
        "x" * 64,
        "notify",  # only the prefix "notify." is reserved
        "notifyx.y",
        "my.notify.thing",
        "Notify.open",  # event names are case-sensitive, as in EventSource
    ],
)
def test_valid_event_types(event):
    assert validate_event_type(event) == event


@pytest.mark.parametrize("event", ["notify.", "notify.open", "notify.reset", "notify.custom"])
def test_reserved_event_types(event):
    code, message = error_of(validate_event_type, event)
    assert code == "reserved"
    assert message == (
        f'event type "{event}" starts with "notify.", which is reserved for '
        "notify's control events"
    )


def test_empty_event_type():
    code, message = error_of(validate_event_type, "")
    assert code == "empty"
    assert message == "event type is empty; use 1 to 64 characters of [A-Za-z0-9_.:-]"


def test_event_type_too_long():
    code, message = error_of(validate_event_type, "x" * 65)
    assert code == "too_long"
    assert message == "event type is 65 characters long; the limit is 64"


@pytest.mark.parametrize(
    ("event", "described"),
    [
        ("a\n", "U+000A"),
        ("a\r", "U+000D"),
        ("a\x00", "U+0000"),
        ("a b", "a space"),
        # "/" and "@" are allowed in channels, not in event types.
        ("a/b", '"/"'),
        ("a@b", '"@"'),
        ("é", '"é"'),
        ("message\n\ndata: x", "U+000A"),
    ],
)
def test_event_type_with_a_bad_character(event, described):
    code, message = error_of(validate_event_type, event)
    assert code == "bad_character"
    assert described in message
    assert message.endswith("use only [A-Za-z0-9_.:-]")


def test_event_type_must_be_a_string():
    code, message = error_of(validate_event_type, None)
    assert code == "type"
    assert message == "event type must be a string, not NoneType"


# -- data -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "stored", "text"),
    [
        (None, None, "null"),
        (42, 42, "42"),
        ("hello", "hello", '"hello"'),
        (True, True, "true"),
        (2.5, 2.5, "2.5"),
        ([], [], "[]"),
        ({}, {}, "{}"),
        ({"b": 1, "a": 2}, {"a": 2, "b": 1}, '{"a": 2, "b": 1}'),
        # Tuples become lists, and keys become strings, as they will come back from the database.
        ((1, (2, 3)), [1, [2, 3]], "[1, [2, 3]]"),
        ({1: "x", 2: "y"}, {"1": "x", "2": "y"}, '{"1": "x", "2": "y"}'),
        (
            {True: 1, None: 2, 1.5: 3},
            {"true": 1, "null": 2, "1.5": 3},
            '{"1.5": 3, "null": 2, "true": 1}',
        ),
        # Keys of mixed types are JSON-serializable too.
        ({10: "a", "b": 2, 9: "c"}, {"10": "a", "b": 2, "9": "c"}, '{"10": "a", "9": "c", "b": 2}'),
        ("é😀\u2028", "é😀\u2028", '"\\u00e9\\ud83d\\ude00\\u2028"'),
        (
            {"ключ": "знач"},
            {"ключ": "знач"},
            '{"\\u043a\\u043b\\u044e\\u0447": "\\u0437\\u043d\\u0430\\u0447"}',
        ),
    ],
)
def test_data_is_normalized(data, stored, text):
    value, encoded = encode_payload(data)
    assert value == stored
    assert encoded == text
    assert encoded == encode_json(value)
    assert encoded.isascii()


def test_floats_are_normalized_as_postgresql_stores_them():
    # jsonb prints 1e+16 as 10000000000000000 and -0.0 as 0.0: normalise to that on every
    # database, so the bytes replayed are the bytes sent live.
    value, text = encode_payload([1e16, 1.2345678901234567e20, -0.0, 0.0, 1.5e-07, 1.0, -2.5e300])
    assert text == (
        "[10000000000000000, 123456789012345670000, 0.0, 0.0, 1.5e-07, 1.0, -25" + "0" * 299 + "]"
    )
    assert value[0] == 10**16 and isinstance(value[0], int)
    assert value[2] == 0.0 and str(value[2]) == "0.0"
    assert value[4] == 1.5e-07
    assert value[5] == 1.0 and isinstance(value[5], float)


def test_keys_that_collide_once_converted_to_strings():
    code, message = error_of(encode_payload, {1: "a", "1": "b"})
    assert code == "duplicate_key"
    assert message == 'data has the key "1" twice once keys are converted to strings'
    code, _ = error_of(encode_payload, [{"x": {True: 1, "true": 2}}])
    assert code == "duplicate_key"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (object(), "Object of type object is not JSON serializable"),
        ({1, 2}, "Object of type set is not JSON serializable"),
        (b"bytes", "Object of type bytes is not JSON serializable"),
        ({"when": __import__("datetime").date(2026, 1, 1)}, "Object of type date"),
        ({(1, 2): "tuple key"}, "keys must be str, int, float, bool or None, not tuple"),
    ],
)
def test_data_not_serializable(data, fragment):
    code, message = error_of(encode_payload, data)
    assert code == "not_json"
    assert message.startswith("data is not JSON-serializable: ")
    assert fragment in message


@pytest.mark.parametrize(
    "data", [float("nan"), float("inf"), float("-inf"), {"a": [1, float("nan")]}]
)
def test_data_with_nan_or_infinity(data):
    code, message = error_of(encode_payload, data)
    assert code == "nan"
    assert message == "data contains NaN or Infinity, which JSON cannot represent"


def test_data_with_a_circular_reference():
    looped: list = [1]
    looped.append(looped)
    code, message = error_of(encode_payload, looped)
    assert code == "not_json"
    assert "Circular reference" in message
    mapping: dict = {}
    mapping["self"] = mapping
    code, message = error_of(encode_payload, {"outer": mapping})
    assert code == "not_json"
    assert "Circular reference" in message


def test_data_nested_too_deeply():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    code, message = error_of(encode_payload, deep)
    assert code == "too_deep"
    assert message == "data is nested too deeply to encode"


def nested_lists(depth):
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_nesting_limit_is_500_lists_and_objects():
    _, text = encode_payload(nested_lists(MAX_DEPTH))
    assert MAX_DEPTH == 500
    assert text == "[" * 500 + "]" * 500
    code, message = error_of(encode_payload, nested_lists(MAX_DEPTH + 1))
    assert code == "too_deep"
    assert message == "data is nested more than 500 levels deep"
    # Objects count as levels too, and so do tuples.
    mixed: object = 1
    for level in range(MAX_DEPTH + 1):
        mixed = {"k": mixed} if level % 2 else (mixed,)
    code, _ = error_of(encode_payload, mixed)
    assert code == "too_deep"
    # Depth, not size: many siblings are fine.
    encode_payload([[[1]] * 1000])


def test_moderately_nested_data_is_fine():
    nested: dict = {"leaf": 1}
    for _ in range(100):
        nested = {"n": [nested]}
    value, text = encode_payload(nested)
    assert json.loads(text) == value == nested


@pytest.mark.parametrize(
    "data",
    [
        "a\x00b",
        ["ok", "\x00"],
        {"k": {"deep": ["x\x00"]}},
        {"key\x00": 1},  # keys too
        {"a": {"\x00": None}},
        ("tuple", "\x00"),
    ],
)
def test_data_with_nul(data):
    code, message = error_of(encode_payload, data)
    assert code == "nul"
    assert message == "data contains a NUL character (\\u0000), which the database cannot store"


@pytest.mark.parametrize(
    ("data", "codepoint"),
    [
        ("\ud800", "U+D800"),
        ("a\udfffb", "U+DFFF"),
        ({"\udc00": 1}, "U+DC00"),
        (["ok", {"x": "\ud83d"}], "U+D83D"),  # half of a surrogate pair
    ],
)
def test_data_with_a_lone_surrogate(data, codepoint):
    code, message = error_of(encode_payload, data)
    assert code == "surrogate"
    assert message == f"data contains a lone surrogate ({codepoint}), which is not valid Unicode"


def test_a_lone_surrogate_in_a_channel_is_named_as_such():
    with pytest.raises(ValidationError) as caught:
        validate_channel("a\ud800")
    assert "U+D800 (a lone surrogate)" in caught.value.messages[0]


def test_surrogate_pairs_written_out_are_fine():
    value, text = encode_payload("😀")
    assert value == "😀"
    assert text == '"\\ud83d\\ude00"'


def test_default_payload_limit_is_64_kib():
    assert DEFAULTS["MAX_PAYLOAD_BYTES"] == 65536
    encode_payload("x" * (65536 - 2))  # exactly the limit once quoted
    code, message = error_of(encode_payload, "x" * (65536 - 1))
    assert code == "too_large"
    assert message == (
        'data is 65,537 bytes encoded; the limit is 65,536 (NOTIFY["MAX_PAYLOAD_BYTES"])'
    )


def test_payload_limit_from_settings(settings):
    with override_settings(NOTIFY={**settings.NOTIFY, "MAX_PAYLOAD_BYTES": 100}):
        assert encode_payload("x" * 98)[1] == '"' + "x" * 98 + '"'
        code, message = error_of(encode_payload, "x" * 99)
        assert code == "too_large"
        assert message == (
            'data is 101 bytes encoded; the limit is 100 (NOTIFY["MAX_PAYLOAD_BYTES"])'
        )
        # The limit counts encoded bytes: "é" is sent as \u00e9, six bytes.
        encode_payload("é" * 16)  # 98 bytes
        code, message = error_of(encode_payload, "é" * 17)
        assert code == "too_large"
        assert "data is 104 bytes encoded" in message
        # Sorting and spacing count as sent: {"a": 1} is 8 bytes.
        encode_payload({str(i): i for i in range(10)})


# -- cursors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0", 0),
        ("1", 1),
        ("42", 42),
        ("007", 7),
        ("9" * 19, int("9" * 19)),
        ("9" * 20, int("9" * 20)),  # 20 digits is accepted (it is then beyond the newest id)
        ("0" * 20, 0),
        ("9" * 21, None),
        ("0" * 21, None),
        ("", None),
        ("-1", None),
        ("+1", None),
        (" 1", None),
        ("1 ", None),
        ("1\n", None),
        ("1.0", None),
        ("1e3", None),
        ("0x10", None),
        ("1_000", None),
        ("abc", None),
        ("null", None),
        ("\u0661\u0662", None),  # Arabic-Indic digits are not [0-9]
        ("\uff11", None),  # fullwidth 1
    ],
)
def test_parse_cursor(raw, expected):
    assert parse_cursor(raw) == expected
