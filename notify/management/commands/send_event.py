from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from notify.api import publish


def _refuse_constant(name: str) -> Any:
    # json.loads accepts NaN and Infinity, which are not JSON: treat such DATA as a string.
    raise ValueError(name)


def parse_data(raw: str | None) -> Any:
    """DATA as JSON when it is valid JSON, else the string itself."""
    if raw is None:
        return None
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except ValueError:
        return raw


class Command(BaseCommand):
    help = "Publish one event and print its id. DATA is parsed as JSON when it is valid JSON."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("channel", help="the channel, e.g. broadcast or user:42")
        parser.add_argument("data", nargs="?", help="JSON, or any other text sent as a string")
        parser.add_argument("--event", default="message", help='event type (default "message")')

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            event = publish(options["channel"], parse_data(options["data"]), event=options["event"])
        except ValidationError as exc:
            raise CommandError(exc.messages[0]) from exc
        self.stdout.write(str(event.id))
