"""Publish the bench payload to django-eventstream's ``bench`` channel, from a process of its
own, the way an application would: ``send_event`` stores the event (``DjangoModelStorage``)
and then publishes it to Redis, where every server process's subscription picks it up.

    .bench-venv/bin/python -m bench.eventstream.publisher --rate 10 --count 100

Paced and summarised by ``bench.publisher.publish``, as notify's and the bare app's
publishers are: the same schedule, the same payload, the same JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import Any

from bench.publisher import publish

CHANNEL = "bench"
WARMUP_CHANNEL = "bench-warmup"
EVENT_TYPE = "message"


def eventstream_sender() -> Callable[[dict[str, Any]], None]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.eventstream.settings")
    import django

    django.setup()
    from django_eventstream import send_event

    # Connect to the database and Redis before the first timed event, as notify's
    # publisher does: one event on a channel no bench stream reads.
    send_event(WARMUP_CHANNEL, EVENT_TYPE, None)

    def send(payload: dict[str, Any]) -> None:
        send_event(CHANNEL, EVENT_TYPE, payload)

    return send


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=10.0, help="events/s; 0 = unthrottled")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--first", type=int, default=1, help="sequence number of the first")
    args = parser.parse_args()
    send = eventstream_sender()
    print(json.dumps(publish(send, args.rate, args.count, args.first)), flush=True)


if __name__ == "__main__":
    main()
