"""django-eventstream 5.x on daphne, as a bench target (``eventstream-daphne``).

Everything runs with the bench environment's Python (``.bench-venv``, made by ``make bench``),
since django-eventstream is never installed into the project's: migrations, the server
(``bench.eventstream.asgi:application``, the stream at ``/events/``, channel ``bench``) and
the publisher (``python -m bench.eventstream.publisher --rate R --count N``).

Same services as the other targets: ``DATABASE_URL`` and ``REDIS_URL``. Two things differ:
- django-eventstream publishes on one fixed Redis pub/sub channel, ``events_channel``, with
  no prefix setting (and pub/sub ignores the Redis database number), so
  ``BENCH_REDIS_PREFIX`` cannot isolate it: run one eventstream target at a time per Redis.
- each open stream holds a thread and a database connection for as long as it is open, so
  on PostgreSQL the streams past ``max_connections`` (100 by default, shared with the
  publisher and everything else) never get a byte: daphne has already taken the response's
  200 when the stream's first query fails, cannot send a 500 instead, and leaves the
  connection open and silent. A publisher that has to connect then fails too, so none of
  the open streams gets an event either. The load generator reports those streams as
  connection timeouts; scenarios should report that limit rather than a latency. This is
  why ``bench.run`` starts a cluster of its own with ``max_connections=1200``
  (``bench.postgres``) unless ``DATABASE_URL`` is set.
"""

from __future__ import annotations

from bench.common import ROOT
from bench.targets import Target, services

PYTHON = str(ROOT / ".bench-venv" / "bin" / "python")


def eventstream_target() -> Target:
    """The target, with the services of this process's environment."""
    env = {**services(), "DJANGO_SETTINGS_MODULE": "bench.eventstream.settings"}
    return Target(
        name="eventstream-daphne",
        server="daphne",
        app="bench.eventstream.asgi:application",
        stream_path="/events/",
        publisher_command=(PYTHON, "-m", "bench.eventstream.publisher"),
        env=env,
        python=PYTHON,
        database=env["DATABASE_URL"],
        prepare_command=(PYTHON, "manage.py", "migrate", "-v0"),
    )


# Built at import, from the environment then; bench.targets builds a fresh one instead.
TARGET = eventstream_target()
