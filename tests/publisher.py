"""A publisher process for the delivery tests: ``python -m tests.publisher COUNT SEED CHANNEL...``.

Publishes COUNT events to random channels as fast as it can; every seventh publish happens
inside a transaction that rolls back (leaving a hole in the ids). Prints the ids it committed.
"""

import os
import random
import sys

import django


class Rollback(Exception):
    pass


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    django.setup()
    from django.db import transaction

    import notify

    count, seed, channels = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    rng = random.Random(seed)
    committed = []
    for n in range(count):
        channel = rng.choice(channels)
        if n % 7 == 3:
            try:
                with transaction.atomic():
                    notify.publish(channel, {"seed": seed, "n": n, "rolled_back": True})
                    raise Rollback
            except Rollback:
                continue
        committed.append(notify.publish(channel, {"seed": seed, "n": n}).id)
    print(" ".join(map(str, committed)))


if __name__ == "__main__":
    main()
