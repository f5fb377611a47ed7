"""``manage.py listen [CHANNEL ...] [--last-event-id N] [--json]``: follow channels from a
terminal, reading the database and the broker directly."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from notify import sse
from notify.hub import HubUnavailable, get_hub
from notify.stream import EventStream, parse_channels
from notify.validation import parse_cursor


def cursor(raw: str) -> str:
    if parse_cursor(raw) is None:
        raise argparse.ArgumentTypeError(
            f'"{raw}" is not an event id; give a whole number of at most 20 digits '
            "(0 replays every event kept)"
        )
    return raw


# What listen never writes as is, because a terminal would act on it instead of showing it,
# or show the line as something else than it is:
# - C0 controls (U+0000-U+001F), DEL and the C1 controls (U+0080-U+009F): ESC and CSI
#   (U+009B) start sequences that move the cursor, clear the screen, set the window title or
#   write to the clipboard (OSC 52). A line needs none of them: its "\n" is written after
#   this escaping, and a payload's own line breaks and tabs are JSON escapes already.
# - Unicode's bidi controls (the Bidi_Control property: ALM, LRM, RLM, the embeddings and
#   overrides U+202A-U+202E, the isolates U+2066-U+2069): they reorder what follows them
#   on screen, so that "#7 orders" could read as another channel or id (Trojan Source).
# - The line and paragraph separators U+2028 and U+2029, which editors, JavaScript and some
#   log viewers take for line breaks: one event would show as two lines, the second forged.
# Other invisible characters (zero-width space and joiner, the BOM) stay: they move nothing
# and the joiners are part of emoji. An escape is written as JSON writes one, "\u202e":
# the data of an event (and all of a --json line) is JSON, where a backslash of the payload
# is written "\\", so the escape reads back as the character it stands for; and a name
# that passed validation holds no backslash.
_UNSAFE_ON_A_TERMINAL = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]"
)


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def terminal_safe(line: str) -> str:
    """``line`` with every character of ``_UNSAFE_ON_A_TERMINAL`` written ``\\uXXXX``."""
    return _UNSAFE_ON_A_TERMINAL.sub(_escape, line)


def as_json(frame: sse.Frame) -> str:
    """An event's envelope exactly as a stream sends it; a control event as
    ``{"control": NAME, "id": ID or null, "data": {...}}``."""
    if frame.event.startswith(sse.CONTROL_PREFIX):
        name, event_id = json.dumps(frame.event), json.dumps(frame.id)
        return f'{{"control": {name}, "id": {event_id}, "data": {frame.data}}}'
    return frame.data


def as_text(frame: sse.Frame) -> str:
    """``#42 orders message {"a": 1}``; a control event as ``-- notify.open #42 {...}``."""
    if frame.event.startswith(sse.CONTROL_PREFIX):
        id_part = "" if frame.id is None else f" #{frame.id}"
        return f"-- {frame.event}{id_part} {frame.data}"
    envelope = json.loads(frame.data)
    data = json.dumps(envelope["data"], ensure_ascii=False, sort_keys=True)
    return f"#{envelope['id']} {envelope['channel']} {envelope['event']} {data}"


async def follow(
    channels: tuple[str, ...], last_event_id: str | None, show: Callable[[sse.Frame], None]
) -> None:
    """Hand every event of ``channels`` to ``show``, as a stream with this cursor would
    send it, until cancelled. A closed stream (a reader too slow for ``MAX_BUFFER``) is
    resumed from the last id seen, as an EventSource reconnects."""
    hub = get_hub()
    try:
        while True:
            subscriber = await hub.subscribe(channels)
            try:
                async for chunk in EventStream(subscriber, last_event_id).body():
                    for frame in sse.parse_frames(chunk):
                        if frame.id is not None:
                            last_event_id = str(frame.id)
                        show(frame)
            finally:
                hub.unsubscribe(subscriber)
    finally:
        # Stop the hub's tasks here rather than leave them to asyncio.run's clean-up.
        hub.close()


class Command(BaseCommand):
    help = (
        'Print the events of CHANNELs (default "broadcast") as they are published, until '
        "Ctrl-C; with --last-event-id, first replay the events after that id. Each line is "
        'an event, "#42 orders message {"a": 1}", or a control event of the stream, '
        '"-- notify.catchup-end {"count": 3, "last_id": 42}". With --json, each line is '
        "instead the event's JSON envelope exactly as a stream sends it "
        '({"id", "channel", "event", "created", "data"}), or for a control event '
        '{"control": "notify.open", "id": 42, "data": {...}}. Reads the database and the '
        "broker directly, no HTTP."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("channels", nargs="*", metavar="CHANNEL", help="a channel to follow")
        parser.add_argument(
            "--last-event-id",
            type=cursor,
            metavar="N",
            help="replay the events after id N first (0: every event kept)",
        )
        parser.add_argument("--json", action="store_true", help="print one JSON object a line")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            channels = parse_channels(options["channels"])
        except ValidationError as exc:
            raise CommandError(exc.messages[0]) from exc
        render = as_json if options["json"] else as_text

        def show(frame: sse.Frame) -> None:
            # Whatever the mode: a payload is anyone's text, and so is a name stored by code
            # that did not validate it.
            self.stdout.write(terminal_safe(render(frame)))
            # Whoever reads a pipe should see each event when it arrives.
            self.stdout.flush()

        try:
            asyncio.run(follow(channels, options["last_event_id"], show))
        except KeyboardInterrupt:
            return
        except BrokenPipeError:
            # The reader went away (``listen | head``): stop quietly, like any filter, and
            # leave nothing for the interpreter to fail to flush at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (HubUnavailable, DatabaseError) as exc:
            raise CommandError(f"cannot listen: {exc}") from exc
