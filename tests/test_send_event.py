"""``manage.py send_event CHANNEL [DATA] [--event TYPE]``."""

import io
import subprocess
import sys

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from notify.broker import decode_notice
from notify.models import Event
from tests.conftest import ROOT, Listener, server_env


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
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "send_event", *args],
        cwd=ROOT,
        env=server_env(redis_url),
        capture_output=True,
        text=True,
        timeout=60,
    )


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
