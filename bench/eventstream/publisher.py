"""Publish the bench payload to django-eventstream's ``bench`` channel, from a process of its
own, the way an application would: ``send_event`` stores the event (``DjangoModelStorage``)
and then publishes it to Redis, where every server process's subscription picks it up.

    .bench-venv/bin/python -m bench.eventstream.publisher --rate 10 --count 100

Events are paced on an absolute schedule (event i is due at start + i / rate), so a slow
publish delays the next ones instead of stretching the whole run; ``--rate 0`` publishes
as fast as one process can. Each payload is stamped with ``time.time()`` just before its
``send_event``, so the latency a client sees includes the database write, as notify's does.
The last line on stdout is a JSON summary (count, seconds, publishes/s, how late it fell).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

CHANNEL = "bench"
EVENT_TYPE = "message"


def publish(
    rate: float, count: int | None, duration: float | None, first: int = 1
) -> dict[str, Any]:
    """Send events ``first``, ``first + 1``, … at ``rate`` per second (0: unthrottled) until
    ``count`` events are sent or ``duration`` seconds have passed, whichever comes first.
    Needs Django set up with ``bench.eventstream.settings``."""
    if count is None and duration is None:
        raise ValueError("give a count or a duration, or the publisher never stops")
    from django.db import connection
    from django_eventstream import send_event

    from bench.common import bench_payload

    sent = 0
    max_late = 0.0
    start = time.monotonic()
    deadline = None if duration is None else start + duration
    try:
        while count is None or sent < count:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if rate > 0:
                due = start + sent / rate
                if due > now:
                    time.sleep(due - now)
                else:
                    max_late = max(max_late, now - due)
            send_event(CHANNEL, EVENT_TYPE, bench_payload(first + sent))
            sent += 1
    finally:
        connection.close()
    seconds = time.monotonic() - start
    return {
        "published": sent,
        "first": first,
        "seconds": seconds,
        "per_second": sent / seconds if seconds > 0 else 0.0,
        "max_late_seconds": max_late,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=10.0, help="events/s; 0 = unthrottled")
    parser.add_argument("--count", type=int, help="stop after this many events")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--first", type=int, default=1, help="sequence number of the first")
    args = parser.parse_args()
    if args.count is None and args.duration is None:
        args.count = 100

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.eventstream.settings")
    import django

    django.setup()
    print(json.dumps(publish(args.rate, args.count, args.duration, args.first)), flush=True)


if __name__ == "__main__":
    main()
