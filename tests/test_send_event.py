"""``manage.py send_event CHANNEL [DATA] [--event TYPE]`` and ``send_event --stdin``."""

import io
import subprocess

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from notify.broker import decode_notice
from notify.models import Event
from tests.conftest import Listener, manage


def send_event(*args: str) -> tuple[Event, str]:
    out = io.StringIO()
    call_command("send_event", *args, stdout=out)
    printed = out.getvalue()
    event = Event.objects.get(pk=int(printed))
    return event, printed


def refused(*args: str) -> str:
    with pytest.raises(CommandError) as caught:
        call_command("send_event", *args, stdout=io.StringIO(), stderr=io.StringIO())
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.django_db
def test_prints_the_new_id():
    event, printed = send_event("orders", '{"a": 1}')
    assert printed == f"{event.id}\n"
    assert (event.channel, event.event, event.data) == ("orders", "message", {"a": 1})
    second, printed = send_event("orders", "2")
    assert printed == f"{second.id}\n"
    assert second.id > event.id


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("raw", "data"),
    [
        ('{"a": 1}', {"a": 1}),
        ('{"b": [1, 2.5, null], "a": {"c": true}}', {"a": {"c": True}, "b": [1, 2.5, None]}),
        ("42", 42),
        ("-1.5", -1.5),
        ("[1, 2]", [1, 2]),
        ('"quoted"', "quoted"),
        ("true", True),
        ("null", None),
        ('"caf\\u00e9"', "café"),
        ("café", "café"),
        ("hello", "hello"),
        ("hello world", "hello world"),
        ("{not json}", "{not json}"),
        ("", ""),
        (" 7 ", 7),
        # json.loads accepts these, but they are not JSON: sent as the string itself.
        ("NaN", "NaN"),
        ("Infinity", "Infinity"),
        ("[1, NaN]", "[1, NaN]"),
        ('{"a": Infinity}', '{"a": Infinity}'),
    ],
)
def test_data_is_json_when_valid_else_a_string(raw, data):
    event, _ = send_event("orders", raw)
    assert event.data == data
    assert type(event.data) is type(data)


@pytest.mark.django_db
def test_data_starting_with_a_dash():
    event, _ = send_event("orders", "-3")
    assert event.data == -3
    # argparse reads "-Infinity" as an option; "--" ends the options as usual.
    event, _ = send_event("orders", "--", "-Infinity")
    assert event.data == "-Infinity"


@pytest.mark.django_db
def test_without_data():
    event, _ = send_event("broadcast")
    assert event.data is None


@pytest.mark.django_db
def test_event_type_option():
    event, _ = send_event("orders", "1", "--event", "order.paid")
    assert event.event == "order.paid"
    event, _ = send_event("orders", "--event=order.shipped")
    assert (event.event, event.data) == ("order.shipped", None)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ("bad channel", "1"),
            'channel "bad channel" contains a space; use only [A-Za-z0-9_.:@/-]',
        ),
        (("",), "channel is empty; use 1 to 200 characters of [A-Za-z0-9_.:@/-]"),
        (("x" * 201,), "channel is 201 characters long; the limit is 200"),
        (
            ("a\nb",),
            'channel "a\\nb" contains U+000A (a control character); use only [A-Za-z0-9_.:@/-]',
        ),
        (
            ("orders", "1", "--event", "notify.open"),
            'event type "notify.open" starts with "notify.", which is reserved for '
            "notify's control events",
        ),
        (
            ("orders", "1", "--event", "two words"),
            'event type "two words" contains a space; use only [A-Za-z0-9_.:-]',
        ),
        (
            ("orders", '"nul \\u0000"'),
            "data contains a NUL character (\\u0000), which the database cannot store",
        ),
    ],
)
def test_bad_input_is_a_command_error(args, expected):
    assert refused(*args) == expected
    assert Event.objects.count() == 0


@pytest.mark.django_db
def test_oversize_data(settings):
    with override_settings(NOTIFY={**settings.NOTIFY, "MAX_PAYLOAD_BYTES": 10}):
        assert refused("orders", "x" * 20) == (
            'data is 22 bytes encoded; the limit is 10 (NOTIFY["MAX_PAYLOAD_BYTES"])'
        )
    assert refused("orders", "x" * 70_000).startswith("data is 70,002 bytes encoded")
    assert Event.objects.count() == 0


@pytest.mark.django_db
def test_missing_channel():
    with pytest.raises(CommandError, match="channel"):
        call_command("send_event", stdout=io.StringIO(), stderr=io.StringIO())


def run_manage(*args: str, redis_url: str | None) -> subprocess.CompletedProcess[str]:
    return manage("send_event", *args, redis=redis_url)


@pytest.mark.django_db(transaction=True)
def test_as_a_real_process(redis_url):
    listener = Listener(redis_url)
    try:
        done = run_manage("orders", '{"b": 2, "a": 1}', "--event", "cli.test", redis_url=redis_url)
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        event = Event.objects.get(pk=int(done.stdout))
        assert done.stdout == f"{event.id}\n"
        assert (event.channel, event.event, event.data) == ("orders", "cli.test", {"a": 1, "b": 2})
        # The other process broadcast the event after its commit.
        notice = decode_notice(listener.next())
        assert notice.id == event.id
        assert notice.frame == event.sse_frame()
    finally:
        listener.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("bad channel", "1"), 'channel "bad channel" contains a space'),
        (("orders", "--event", "notify.x"), 'event type "notify.x" starts with "notify."'),
        (("orders", "x" * 70_000), "data is 70,002 bytes encoded; the limit is 65,536"),
    ],
)
def test_bad_input_in_a_real_process(redis_url, args, reason):
    done = run_manage(*args, redis_url=redis_url)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("CommandError: ")
    assert reason in lines[0]
    assert Event.objects.count() == 0


# --- send_event --stdin ------------------------------------------------------------------


def send_lines(lines: list[str | bytes], *args: str) -> str:
    raw = b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines)
    out = io.StringIO()
    call_command("send_event", "--stdin", *args, input=io.BytesIO(raw), stdout=out)
    return out.getvalue()


def refused_lines(lines: list[str | bytes], *args: str) -> str:
    with pytest.raises(CommandError) as caught:
        send_lines(lines, *args)
    message = str(caught.value)
    assert "\n" not in message
    return message


def stored() -> list[tuple[str, str, object]]:
    return list(Event.objects.order_by("id").values_list("channel", "event", "data"))


@pytest.mark.django_db
def test_stdin_publishes_a_line_each():
    printed = send_lines(
        [
            '{"channel": "orders", "event": "order.paid", "data": {"id": 7}}',
            "",
            '  {"channel": "orders"}  ',
            '{"data": [1, "caf\\u00e9"], "channel": "user:42"}',
            "\t",
        ]
    )
    first, *_, last = Event.objects.order_by("id")
    assert printed == f"published 3 events (ids {first.id}..{last.id})\n"
    assert stored() == [
        ("orders", "order.paid", {"id": 7}),
        ("orders", "message", None),
        ("user:42", "message", [1, "café"]),
    ]


@pytest.mark.django_db
def test_stdin_event_option_is_the_default_type():
    send_lines(['{"channel": "a"}', '{"channel": "a", "event": "own"}'], "--event", "cli")
    assert [event for _, event, _ in stored()] == ["cli", "own"]


@pytest.mark.django_db
def test_stdin_summary_for_one_and_for_none():
    assert send_lines([]) == "published 0 events\n"
    printed = send_lines(['{"channel": "a"}'])
    assert printed == f"published 1 event (id {Event.objects.get().id})\n"


@pytest.mark.django_db
def test_stdin_bad_line_stores_nothing_of_its_batch():
    lines = [f'{{"channel": "orders", "data": {n}}}' for n in range(1, 11)]
    lines[6] = '{"channel": "a b", "data": 7}'
    message = refused_lines(lines, "--batch-size", "4")
    assert message == (
        'line 7: channel "a b" contains a space; use only [A-Za-z0-9_.:@/-]; '
        "4 events before it were published, nothing from line 5 on"
    )
    assert [data for _, _, data in stored()] == [1, 2, 3, 4]


@pytest.mark.django_db
def test_stdin_line_numbers_count_blank_lines():
    message = refused_lines(
        ['{"channel": "a"}', "", '{"channel": "b"}', "", "oops"], "--batch-size", "1"
    )
    assert message.startswith("line 5: not JSON")
    assert message.endswith("2 events before it were published, nothing from line 4 on")
    assert Event.objects.count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("oops", "not JSON (Expecting value at column 1)"),
        (
            '{"channel": "a",}',
            "not JSON (Expecting property name enclosed in double quotes at column 17)",
        ),
        ('{"channel": "a", "data": NaN}', "not JSON: it contains NaN, which JSON cannot represent"),
        (b'{"channel": "a", "data": "\xff"}', "not UTF-8 (byte 0xff at column 27)"),
        ("[1, 2]", 'expected a JSON object like {"channel": "orders", "data": 1}, not an array'),
        ('"orders"', 'expected a JSON object like {"channel": "orders", "data": 1}, not a string'),
        ("null", 'expected a JSON object like {"channel": "orders", "data": 1}, not null'),
        ('{"data": 1}', 'no "channel"; a line holds "channel" and optionally "event" and "data"'),
        (
            '{"channel": "a", "dat": 1}',
            'unknown key "dat"; a line holds "channel" and optionally "event" and "data"',
        ),
        ('{"channel": "a", "channel": "b"}', 'the key "channel" appears twice in one object'),
        ('{"channel": "a", "data": {"k": 1, "k": 2}}', 'the key "k" appears twice in one object'),
        ('{"channel": 7}', "channel must be a string, not int"),
        ('{"channel": ""}', "channel is empty; use 1 to 200 characters of [A-Za-z0-9_.:@/-]"),
        (
            '{"channel": "a", "event": "notify.open"}',
            'event type "notify.open" starts with "notify.", which is reserved for '
            "notify's control events",
        ),
        (
            '{"channel": "a", "data": "\\u0000"}',
            "data contains a NUL character (\\u0000), which the database cannot store",
        ),
    ],
)
def test_stdin_bad_lines(line, reason):
    assert refused_lines([line]) == f"line 1: {reason}; nothing was published"
    assert Event.objects.count() == 0


@pytest.mark.django_db
def test_stdin_takes_no_channel_or_data():
    with pytest.raises(CommandError, match="give no CHANNEL or DATA with it"):
        call_command("send_event", "--stdin", "orders", input=io.BytesIO(b""))
    assert Event.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("size", ["0", "-1", "x"])
def test_stdin_batch_size_must_be_positive(size):
    with pytest.raises(
        CommandError, match=f'argument --batch-size: "{size}" is not a whole number'
    ):
        send_lines([], f"--batch-size={size}")


@pytest.mark.django_db
def test_stdin_stores_each_batch_in_one_insert():
    lines = [f'{{"channel": "a", "data": {n}}}' for n in range(10)]
    with CaptureQueriesContext(connection) as queries:
        send_lines(lines, "--batch-size", "4")
    inserts = [query["sql"] for query in queries if query["sql"].startswith("INSERT")]
    assert len(inserts) == 3
    assert Event.objects.count() == 10


@pytest.mark.django_db(transaction=True)
def test_stdin_thousands_of_events_arrive_in_order(redis_url):
    count = 5000
    listener = Listener(redis_url)
    try:
        printed = send_lines([f'{{"channel": "bulk", "data": {n}}}' for n in range(count)])
        ids = list(Event.objects.order_by("id").values_list("id", flat=True))
        assert len(ids) == count
        assert printed == f"published {count} events (ids {ids[0]}..{ids[-1]})\n"
        notices = [decode_notice(listener.next()) for _ in range(count)]
        assert [notice.id for notice in notices] == ids
        assert notices[-1].frame == Event.objects.get(pk=ids[-1]).sse_frame()
        listener.assert_silent()
    finally:
        listener.close()


def run_stdin(lines: bytes, *args: str, redis_url: str) -> subprocess.CompletedProcess[str]:
    return manage("send_event", "--stdin", *args, redis=redis_url, input=lines.decode())


@pytest.mark.django_db(transaction=True)
def test_stdin_in_a_real_process(redis_url):
    listener = Listener(redis_url)
    try:
        done = run_stdin(b'{"channel": "a", "data": 1}\n{"channel": "b"}\n', redis_url=redis_url)
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        first, second = Event.objects.order_by("id")
        assert done.stdout == f"published 2 events (ids {first.id}..{second.id})\n"
        assert [decode_notice(listener.next()).id for _ in range(2)] == [first.id, second.id]
    finally:
        listener.close()


@pytest.mark.django_db(transaction=True)
def test_stdin_bad_line_in_a_real_process(redis_url):
    lines = b'{"channel": "a"}\n{"channel": "b"}\n{"channel": "c"}\n{"chanel": "d"}\n'
    done = run_stdin(lines, "--batch-size", "2", redis_url=redis_url)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        'CommandError: line 4: unknown key "chanel"; a line holds "channel" and optionally '
        '"event" and "data"; 2 events before it were published, nothing from line 3 on\n'
    )
    assert list(Event.objects.values_list("channel", flat=True)) == ["a", "b"]


@pytest.mark.django_db(transaction=True)
def test_stdin_bad_batch_size_in_a_real_process(redis_url):
    done = run_stdin(b"", "--batch-size", "0", redis_url=redis_url)
    assert done.returncode == 2
    assert 'argument --batch-size: "0" is not a whole number of at least 1' in done.stderr
