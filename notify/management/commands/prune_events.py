"""``manage.py prune_events [--older-than 7d] [--keep N] [--dry-run] [--batch-size N]``."""

from __future__ import annotations

import argparse
import re
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from notify import retention
from notify.conf import Retention, notify_settings
from notify.management.arguments import positive_int

UNIT_SECONDS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"([0-9]+)([wdhms]?)")


def duration(raw: str) -> int:
    """Seconds, from ``30s``, ``15m``, ``12h``, ``7d``, ``2w`` or a plain number of seconds."""
    match = _DURATION.fullmatch(raw.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f'"{raw}" is not a duration; use a whole number of seconds, or of minutes, hours, '
            "days or weeks with a unit: 30s, 15m, 12h, 7d, 2w"
        )
    seconds = int(match[1]) * UNIT_SECONDS[match[2] or "s"]
    try:
        timezone.now() - timedelta(seconds=seconds)
    except OverflowError:
        raise argparse.ArgumentTypeError(f'"{raw}" reaches back before the year 1') from None
    return seconds


def format_duration(seconds: float) -> str:
    """``7d`` for 604800: the largest unit that divides it."""
    for unit, size in UNIT_SECONDS.items():
        if seconds and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def describe(limits: Retention) -> str:
    """Which events the limits delete, for the command's report."""
    parts = []
    if limits.max_age is not None:
        parts.append(f"older than {format_duration(limits.max_age)}")
    if limits.max_events is not None:
        parts.append(f"not among the newest {limits.max_events}")
    return " or ".join(parts)


def _events(count: int) -> str:
    return f"{count} event" if count == 1 else f"{count} events"


class Command(BaseCommand):
    help = (
        "Delete old events now. An event goes when it, and every event before it, is older "
        "than --older-than, or when it is not among the newest --keep; the newest event is "
        "always kept. Without either option, "
        'NOTIFY["RETENTION"] applies (when it keeps every event, there is nothing to do and '
        "the command says so and exits with status 0). Deletes in batches of --batch-size, "
        "one DELETE each, so that publishers wait at most one batch; events published while "
        "it runs are never deleted. Prints how many were deleted (each batch with -v 2)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            type=duration,
            metavar="AGE",
            help="delete events older than AGE: 30s, 15m, 12h, 7d, 2w, or seconds",
        )
        parser.add_argument(
            "--keep",
            type=positive_int,
            metavar="N",
            help="delete every event but the newest N",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="print how many events would be deleted; delete nothing",
        )
        parser.add_argument(
            "--batch-size",
            type=positive_int,
            metavar="N",
            help='events per DELETE (default NOTIFY["PRUNE_BATCH"])',
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.verbosity = options["verbosity"]
        if options["older_than"] is None and options["keep"] is None:
            limits = notify_settings.RETENTION
        else:
            limits = Retention(options["older_than"], options["keep"])
        if limits.max_age is None and limits.max_events is None:
            self._report(
                'NOTIFY["RETENTION"] keeps every event (max_age and max_events are None), so '
                "there is nothing to prune; give --older-than or --keep to prune anyway"
            )
            return
        if options["dry_run"]:
            prune_pass = retention.plan(limits)
            count = 0 if prune_pass is None else retention.count(prune_pass)
            self._report(f"would delete {_events(count)} {describe(limits)}")
            return
        batch_size = options["batch_size"] or notify_settings.PRUNE_BATCH
        total = 0
        for number, deleted in enumerate(retention.prune(limits, batch_size), 1):
            total += deleted
            if self.verbosity >= 2:
                self.stdout.write(f"batch {number}: deleted {_events(deleted)}")
        self._report(f"deleted {_events(total)} {describe(limits)}")

    def _report(self, message: str) -> None:
        if self.verbosity >= 1:
            self.stdout.write(message)
