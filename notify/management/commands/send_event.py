"""``manage.py send_event CHANNEL [DATA] [--event TYPE]``, or one event per line with
``--stdin``."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any, BinaryIO

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from notify.api import Prepared, prepare, publish, publish_many
from notify.management.arguments import positive_int
from notify.validation import NotAJSONConstant, refuse_json_constant

DEFAULT_BATCH_SIZE = 500
LINE_KEYS = ("channel", "event", "data")
LINE_SHAPE = 'a line holds "channel" and optionally "event" and "data"'
_JSON_TYPES = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def parse_data(raw: str | None) -> Any:
    """DATA as JSON when it is valid JSON, else the string itself."""
    if raw is None:
        return None
    try:
        return json.loads(raw, parse_constant=refuse_json_constant)
    except ValueError:
        return raw


def _refuse_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads would keep the last of two "channel" keys and publish to it silently.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValidationError(f"the key {json.dumps(key)} appears twice in one object")
        result[key] = value
    return result


def parse_line(line: bytes, default_event: str) -> Prepared:
    """One line of ``--stdin``, validated. Raises ValidationError saying what is wrong."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(
            f"not UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1})"
        ) from exc
    try:
        item = json.loads(
            text, parse_constant=refuse_json_constant, object_pairs_hook=_refuse_repeated_keys
        )
    except json.JSONDecodeError as exc:
        raise ValidationError(f"not JSON ({exc.msg} at column {exc.colno})") from exc
    except ValueError as exc:  # a refused constant, or an integer of too many digits
        what = exc.name if isinstance(exc, NotAJSONConstant) else exc
        raise ValidationError(f"not JSON: it contains {what}, which JSON cannot represent") from exc
    if not isinstance(item, dict):
        raise ValidationError(
            f'expected a JSON object like {{"channel": "orders", "data": 1}}, '
            f"not {_JSON_TYPES[type(item)]}"
        )
    unknown = [key for key in item if key not in LINE_KEYS]
    if unknown:
        raise ValidationError(f"unknown key {json.dumps(unknown[0])}; {LINE_SHAPE}")
    if "channel" not in item:
        raise ValidationError(f'no "channel"; {LINE_SHAPE}')
    return prepare(item["channel"], item.get("data"), event=item.get("event", default_event))


def _events(count: int) -> str:
    return f"{count} event" if count == 1 else f"{count} events"


class BulkPublisher:
    """Publishes ``--stdin`` a batch at a time and keeps count, so that an error can say
    what was stored before it."""

    def __init__(self, default_event: str, size: int) -> None:
        self.default_event = default_event
        self.size = size
        self.batch: list[Prepared] = []
        self.count = 0
        self.first_id: int | None = None
        self.last_id: int | None = None
        # The first line whose event is not stored yet.
        self.next_line = 1

    def run(self, lines: Iterable[bytes]) -> None:
        """Raises CommandError at the first bad line or failed batch."""
        number = 0
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                self.batch.append(parse_line(line, self.default_event))
            except ValidationError as exc:
                raise CommandError(f"line {number}: {exc.messages[0]}; {self.progress()}") from exc
            if len(self.batch) == self.size:
                self.flush(number)
        self.flush(number)

    def flush(self, last_line: int) -> None:
        if not self.batch:
            return
        try:
            stored = publish_many(self.batch)
        except DatabaseError as exc:
            raise CommandError(
                f"lines {self.next_line}-{last_line} could not be stored: {exc}; {self.progress()}"
            ) from exc
        self.batch = []
        self.count += len(stored)
        if self.first_id is None:
            self.first_id = stored[0].id
        self.last_id = stored[-1].id
        self.next_line = last_line + 1

    def progress(self) -> str:
        if not self.count:
            return "nothing was published"
        verb = "was" if self.count == 1 else "were"
        return (
            f"{_events(self.count)} before it {verb} published, "
            f"nothing from line {self.next_line} on"
        )

    def summary(self) -> str:
        if not self.count:
            return "published 0 events"
        if self.count == 1:
            return f"published 1 event (id {self.first_id})"
        return f"published {self.count} events (ids {self.first_id}..{self.last_id})"


class Command(BaseCommand):
    help = (
        "Publish one event and print its id. DATA is parsed as JSON when it is valid JSON. "
        "With --stdin, publish one event per line of standard input instead, each line a JSON "
        'object {"channel": ..., "event": ..., "data": ...} ("event" defaults to --event, '
        '"data" to null; blank lines are skipped), and print "published N events (ids '
        'FIRST..LAST)". Lines are stored --batch-size at a time, each batch in one '
        "transaction, and broadcast when it commits; for a feed that trickles in, use "
        "--batch-size 1 so that no line waits for a batch to fill. A bad line stops the "
        "command with status 1 and its line number: nothing of its batch is stored, the "
        "batches before it are."
    )
    # call_command("send_event", "--stdin", input=io.BytesIO(...)) reads that binary stream.
    stealth_options = ("input",)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("channel", nargs="?", help="the channel, e.g. broadcast or user:42")
        parser.add_argument("data", nargs="?", help="JSON, or any other text sent as a string")
        parser.add_argument(
            "--event",
            default="message",
            help='event type (default "message"); with --stdin, of the lines that name none',
        )
        parser.add_argument(
            "--stdin",
            action="store_true",
            dest="from_stdin",
            help="publish the events on standard input, one JSON object per line",
        )
        parser.add_argument(
            "--batch-size",
            type=positive_int,
            default=DEFAULT_BATCH_SIZE,
            metavar="N",
            help=f"with --stdin, lines per transaction (default {DEFAULT_BATCH_SIZE})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["from_stdin"]:
            if options["channel"] is not None:
                raise CommandError(
                    "--stdin reads every event from standard input; give no CHANNEL or DATA with it"
                )
            lines: BinaryIO = options.get("input") or sys.stdin.buffer
            publisher = BulkPublisher(options["event"], options["batch_size"])
            publisher.run(lines)
            self.stdout.write(publisher.summary())
            return
        if options["channel"] is None:
            raise CommandError(
                "no channel given: send_event CHANNEL [DATA], "
                "or send_event --stdin to read events from standard input"
            )
        try:
            event = publish(options["channel"], parse_data(options["data"]), event=options["event"])
        except ValidationError as exc:
            raise CommandError(exc.messages[0]) from exc
        self.stdout.write(str(event.id))
