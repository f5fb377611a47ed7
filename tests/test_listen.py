"""``manage.py listen [CHANNEL ...] [--last-event-id N] [--json]``, run as a real process."""

from __future__ import annotations

import io
import json
import queue
import signal
import subprocess
import sys
import threading
import unicodedata
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

import notify
from notify import sse
from notify.api import prepare, publish_many
from notify.models import Event
from tests.conftest import ROOT, manage, server_env


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Listen:
    """``manage.py listen`` in a subprocess; its stdout read line by line with a timeout, as
    the bytes it wrote (``raw_line``) or as text (``line``)."""

    def __init__(self, *args: str, redis_url: str | None, **notify_settings: Any) -> None:
        env = server_env(redis_url, **notify_settings)
        # Python buffers a pipe: a line arrives only because listen flushes it.
        del env["PYTHONUNBUFFERED"]
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "listen", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # A shell's background job ignores SIGINT, and an ignored signal stays ignored
            # across exec: listen would never see the Ctrl-C these tests send.
            preexec_fn=_default_sigint,
        )
        # Bytes, split at b"\n" only: a text pipe would turn a "\r" into a line break and
        # hide what listen wrote.
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def raw_line(self, timeout: float = 10.0) -> bytes:
        """The next line exactly as written, its b"\n" included."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"listen printed nothing in {timeout} s") from None
        if line is None:
            raise EOFError(f"listen exited with {self.process.wait()}: {self.stderr()}")
        return line

    def line(self, timeout: float = 10.0) -> str:
        return self.raw_line(timeout).decode("utf-8").removesuffix("\n")

    def take(self, count: int) -> list[str]:
        return [self.line() for _ in range(count)]

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C; returns the exit status and everything on stderr."""
        self.process.send_signal(signal.SIGINT)
        status = self.process.wait(10)
        return status, self.stderr()

    def stderr(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.read().decode("utf-8")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def listen(transactional_db: None, redis_url: str):
    started: list[Listen] = []

    def start(*args: str, **notify_settings: Any) -> Listen:
        process = Listen(*args, redis_url=redis_url, **notify_settings)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def data_line(event: Event) -> str:
    """What a stream client receives as the event's data: its envelope."""
    return event.sse_frame().decode().split("data: ", 1)[1].rstrip("\n")


def test_json_prints_live_events_as_their_envelope(listen):
    listener = listen("orders", "user:7", "--json")
    opened = json.loads(listener.line())
    newest = Event.objects.order_by("id").last()
    last_id = newest.id if newest else 0
    assert opened == {"control": "notify.open", "id": last_id, "data": {"last_id": last_id}}
    notify.publish("elsewhere", 0)
    first = notify.publish("orders", {"b": [1, 2], "a": "café"}, event="order.paid")
    second = notify.publish("user:7", None)
    lines = listener.take(2)
    assert lines == [data_line(first), data_line(second)]
    envelope = json.loads(lines[0])
    assert envelope == {
        "id": first.id,
        "channel": "orders",
        "event": "order.paid",
        "created": sse.format_created(Event.objects.get(pk=first.id).created),
        "data": {"a": "café", "b": [1, 2]},
    }
    assert list(envelope) == ["id", "channel", "event", "created", "data"]
    assert listener.interrupt() == (0, "")


def test_text_replays_after_the_cursor_then_goes_live(listen):
    before = notify.publish("orders", "before")
    one, _, two = publish_many(
        [prepare("orders", {"n": 1}), prepare("other", 0), prepare("orders", "café", event="x")]
    )
    listener = listen("orders", "--last-event-id", str(before.id))
    assert listener.take(4) == [
        f'-- notify.catchup-start #{before.id} {{"after": {before.id}}}',
        f'#{one.id} orders message {{"n": 1}}',
        f'#{two.id} orders x "café"',
        f'-- notify.catchup-end #{two.id} {{"count": 2, "last_id": {two.id}}}',
    ]
    live = notify.publish("orders", [1, None])
    assert listener.line() == f"#{live.id} orders message [1, null]"
    assert listener.interrupt() == (0, "")


def test_default_channel_is_broadcast(listen):
    listener = listen()
    assert listener.line().startswith("-- notify.open #")
    notify.publish("orders", 1)
    event = notify.publish("broadcast", {"deploy": "v2"})
    assert listener.line() == f'#{event.id} broadcast message {{"deploy": "v2"}}'
    assert listener.interrupt() == (0, "")


# Text that drives or spoofs a terminal, none of which a payload is refused for.
HOSTILE = {
    "csi": "\u009b2J\u009b31mred",  # C1 CSI: clear the screen, then red
    "osc": "\u009d0;pwned\u009c",  # C1 OSC ... ST: the window's title
    "esc": "\x1b[2J\x1b]52;c;cHduZWQ=\x07",  # ESC sequences; OSC 52 writes the clipboard
    "cr": "real\rforged",
    "del": "a\x7fb",
    "nel": "one\u0085two",
    "bidi": "\u202etxt.exe\u202c \u2066isolated\u2069 \u202a\u202b\u202d\u200e\u200f\u061c",
    "separators": "one\u2028two\u2029three",
    "\u202ekey": "a key too",
}
# Unicode's Bidi_Control property.
BIDI_CONTROLS = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def unsafe_on_a_terminal(line: bytes) -> list[str]:
    """The characters of ``line`` (its final newline aside) that a terminal acts on or that
    reorder or break the line: every control character, the bidi controls, U+2028/U+2029."""
    text = line.decode("utf-8").removesuffix("\n")
    return [
        f"U+{ord(char):04X}"
        for char in text
        if unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in BIDI_CONTROLS
    ]


@pytest.mark.parametrize("mode", ["text", "json"])
def test_escapes_what_would_drive_or_spoof_a_terminal(listen, mode):
    before = notify.publish("orders", "before")
    # A name stored by code that bypassed notify.api: validation keeps these out of every
    # name published through notify, so only such a row can carry one.
    unchecked = Event.objects.create(channel="orders", event="x\x1b[2J\x7fy", data="\u202e")
    listener = listen("orders", "--last-event-id", str(before.id), *(["--json"] * (mode == "json")))
    replayed = [listener.raw_line() for _ in range(3)]
    assert b"notify.catchup-end" in replayed[2]
    live = [notify.publish("orders", HOSTILE), notify.publish("orders", "".join(HOSTILE.values()))]
    written = replayed + [listener.raw_line() for _ in live]
    assert listener.interrupt() == (0, "")

    for line in written:
        assert unsafe_on_a_terminal(line) == [], line
    lines = [line.decode("utf-8").removesuffix("\n") for line in written]
    if mode == "json":
        # Each envelope as a stream sends it, still: ASCII JSON, escapes included.
        assert lines[1] == data_line(unchecked)
        assert lines[3:] == [data_line(event) for event in live]
        return
    # Readable and unambiguous: each escape is JSON's, so the data reads back as published.
    assert lines[1] == f'#{unchecked.id} orders x\\u001b[2J\\u007fy "\\u202e"'
    for line, event in zip(lines[3:], live, strict=True):
        prefix = f"#{event.id} orders message "
        assert line.startswith(prefix)
        assert json.loads(line.removeprefix(prefix)) == Event.objects.get(pk=event.id).data
    assert "\\u009b2J\\u009b31mred" in lines[4]
    assert "\\u202etxt.exe\\u202c" in lines[4]


def test_cursor_beyond_the_newest_id_is_reset(listen):
    newest = notify.publish("orders", 1)
    listener = listen("orders", "--json", "--last-event-id", str(newest.id + 10))
    assert json.loads(listener.line()) == {
        "control": "notify.reset",
        "id": newest.id,
        "data": {"oldest_id": Event.objects.order_by("id").first().id, "reason": "unknown-cursor"},
    }
    assert listener.interrupt() == (0, "")


def test_a_stream_closed_as_too_slow_resumes_from_the_last_id(listen):
    listener = listen("bulk", MAX_BUFFER=2)
    assert listener.line().startswith("-- notify.open #")
    # One Redis round trip for 300 notices: the process's hub takes in more than two before
    # the stream can print, closes the stream as too slow, and listen resumes.
    events = publish_many([prepare("bulk", n) for n in range(300)])
    printed, controls = [], []
    while len(printed) < len(events):
        line = listener.line()
        (printed if line.startswith("#") else controls).append(line)
    assert printed == [f"#{event.id} bulk message {n}" for n, event in enumerate(events)]
    assert any(line.startswith("-- notify.catchup-start") for line in controls), controls
    assert listener.interrupt() == (0, "")


@pytest.mark.django_db(transaction=True)
def test_stops_quietly_when_its_reader_goes_away(redis_url):
    # Read in this thread: closing a pipe another thread is reading would deadlock.
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "listen", "orders"],
        cwd=ROOT,
        env=server_env(redis_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline().startswith(b"-- notify.open")
        process.stdout.close()
        notify.publish("orders", 1)
        assert process.wait(10) == 0
        assert process.stderr.read() == b""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize(
    ("args", "status", "reason"),
    [
        (("a b",), 1, 'CommandError: channel "a b" contains a space'),
        (("orders", "orders"), 1, 'CommandError: channel "orders" is given twice'),
        (
            ("--last-event-id", "abc"),
            2,
            'argument --last-event-id: "abc" is not an event id; give a whole number',
        ),
        (("--last-event-id", "-1"), 2, 'argument --last-event-id: "-1" is not an event id'),
    ],
)
def test_bad_input_in_a_real_process(redis_url, args, status, reason):
    done = manage("listen", *args, redis=redis_url)
    assert done.returncode == status
    assert done.stdout == ""
    assert reason in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("a b",), 'channel "a b" contains a space; use only [A-Za-z0-9_.:@/-]'),
        (("",), "channel is empty; use 1 to 200 characters of [A-Za-z0-9_.:@/-]"),
        (
            ("--last-event-id", "1" * 21),
            f'Error: argument --last-event-id: "{"1" * 21}" is not an event id; give a whole '
            "number of at most 20 digits (0 replays every event kept)",
        ),
    ],
)
def test_bad_input_is_a_command_error(args, message):
    with pytest.raises(CommandError) as caught:
        call_command("listen", *args, stdout=io.StringIO(), stderr=io.StringIO())
    assert str(caught.value) == message


def test_too_many_channels(settings):
    with (
        override_settings(NOTIFY={**settings.NOTIFY, "MAX_CHANNELS": 2}),
        pytest.raises(CommandError) as caught,
    ):
        call_command("listen", "a", "b", "c", stdout=io.StringIO())
    assert str(caught.value) == '3 channels requested; the limit is 2 (NOTIFY["MAX_CHANNELS"])'
