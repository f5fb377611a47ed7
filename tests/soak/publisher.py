"""A soak publisher process: ``python -m tests.soak.publisher SEED RATE DURATION BURSTS
BURST_SIZE CHANNEL...`` (BURSTS: comma-separated seconds after start, or "-").

Publishes RATE events/s to random channels for DURATION seconds, mixing in what real
applications do: every tenth publish rolls back (its id must never reach a client), some
publishes are three events in one committed transaction, and at each burst time
BURST_SIZE events are stored at once with ``publish_many``. Prints one JSON line at the end.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

import django


class Rollback(Exception):
    pass


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    django.setup()
    from django.db import transaction

    from notify.api import prepare, publish, publish_many

    seed, rate, duration = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    bursts = [] if sys.argv[4] == "-" else sorted(float(at) for at in sys.argv[4].split(","))
    burst_size, channels = int(sys.argv[5]), sys.argv[6:]
    rng = random.Random(seed)
    counts = {"committed": 0, "rolled_back": 0, "bursts": 0}
    start = time.monotonic()
    due = start
    n = 0
    while (now := time.monotonic()) < start + duration:
        if bursts and now - start >= bursts[0]:
            bursts.pop(0)
            publish_many(
                prepare(rng.choice(channels), {"seed": seed, "burst": counts["bursts"], "k": k})
                for k in range(burst_size)
            )
            counts["committed"] += burst_size
            counts["bursts"] += 1
            continue
        if now < due:
            time.sleep(due - now)
        # A steady rate; after a stall (a slow database) it does not try to catch up.
        due = max(due + 1 / rate, time.monotonic() - 1.0)
        n += 1
        if n % 10 == 3:
            try:
                with transaction.atomic():
                    publish(rng.choice(channels), {"seed": seed, "n": n, "rolled_back": True})
                    raise Rollback
            except Rollback:
                counts["rolled_back"] += 1
        elif n % 10 == 7:
            with transaction.atomic():
                for part in range(3):
                    publish(rng.choice(channels), {"seed": seed, "n": n, "part": part})
            counts["committed"] += 3
        else:
            publish(rng.choice(channels), {"seed": seed, "n": n})
            counts["committed"] += 1
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
