"""Publish the bench payload at a steady rate, from a process of its own, for the notify and
bare targets (``bench.eventstream.publisher`` uses ``publish`` for django-eventstream).

    DJANGO_SETTINGS_MODULE=bench.settings .venv/bin/python -m bench.publisher notify \\
        --rate 10 --count 100
    .venv/bin/python -m bench.publisher bare --channel notify-bench:bare --rate 10 --count 100

``notify``: ``notify.publish("public:bench", payload)``, as an application would (stored in
the database, then broadcast through Redis). ``bare``: one Redis ``PUBLISH`` of the complete
SSE frame (``data: <payload>\\n\\n``), which ``bench.bare_asgi`` writes as it is.

Event i is due at start + i / rate, so a slow publish delays the next ones instead of
stretching the run; ``--rate 0`` publishes as fast as one process can. Each payload is
stamped with ``time.time()`` just before it is published, so the latency a client sees
includes the database write. The last line on stdout is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from typing import Any

from bench.common import DEFAULT_REDIS_URL, bench_payload, percentile

NOTIFY_CHANNEL = "public:bench"
WARMUP_CHANNEL = "public:bench-warmup"


def notify_sender() -> Callable[[dict[str, Any]], None]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    import django

    django.setup()
    import notify

    # Connect to the database and Redis before the first timed event, whose latency would
    # otherwise include connecting: one event on a channel no bench stream reads.
    notify.publish(WARMUP_CHANNEL, None)

    def send(payload: dict[str, Any]) -> None:
        notify.publish(NOTIFY_CHANNEL, payload)

    return send


def bare_sender(channel: str) -> Callable[[dict[str, Any]], None]:
    import redis

    client = redis.Redis.from_url(os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    client.ping()  # connected before the first timed event

    def send(payload: dict[str, Any]) -> None:
        # Encoded as notify encodes data (sorted keys), so both carry the same bytes.
        frame = f"data: {json.dumps(payload, sort_keys=True)}\n\n".encode()
        client.publish(channel, frame)

    return send


def publish(
    send: Callable[[dict[str, Any]], None], rate: float, count: int, first: int = 1
) -> dict[str, Any]:
    """Send events ``first`` … ``first + count - 1`` at ``rate`` per second (0: unthrottled)."""
    max_late = 0.0
    durations = []
    start = time.monotonic()
    for sent in range(count):
        if rate > 0:
            due = start + sent / rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            else:
                max_late = max(max_late, now - due)
        began = time.perf_counter()
        send(bench_payload(first + sent))
        durations.append(time.perf_counter() - began)
    seconds = time.monotonic() - start
    return {
        "published": count,
        "first": first,
        "seconds": seconds,
        "per_second": count / seconds if seconds > 0 else 0.0,
        "max_late_seconds": max_late,
        # How long one publish took: part of every event's latency (database, Redis).
        "publish_ms": {
            "p50": round(percentile(durations, 50) * 1000, 2),
            "p99": round(percentile(durations, 99) * 1000, 2),
            "max": round(max(durations, default=0.0) * 1000, 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["notify", "bare"])
    parser.add_argument("--rate", type=float, default=10.0, help="events/s; 0 = unthrottled")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--first", type=int, default=1, help="sequence number of the first")
    parser.add_argument("--channel", default="notify-bench:bare", help="bare: Redis channel")
    args = parser.parse_args()
    send = notify_sender() if args.kind == "notify" else bare_sender(args.channel)
    print(json.dumps(publish(send, args.rate, args.count, args.first)), flush=True)


if __name__ == "__main__":
    main()
