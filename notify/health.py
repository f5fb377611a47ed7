"""Whether this process can do its work now: the checks behind ``/notify/health/``.

Each check answers ``"ok"`` or ``"down: <reason>"`` within ``TIMEOUT_SECONDS``. The reason
is short and generic (a timeout, or the class of the exception): the endpoint is open to
anyone, so addresses, names and messages go to the log only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable
from concurrent.futures import Future
from typing import NamedTuple

from django.db import connections, router

from notify.broker import get_broker
from notify.hub import open_streams
from notify.models import Event

logger = logging.getLogger("notify.health")

OK = "ok"
# How long each check may take. Both run at once: an answer takes at most this long.
TIMEOUT_SECONDS = 2.0


class Health(NamedTuple):
    database: str
    broker: str
    #: Streams open now in this process.
    streams: int

    @property
    def ok(self) -> bool:
        return self.database == OK and self.broker == OK


async def check() -> Health:
    """Ask the database and the broker, at once."""
    database, broker = await asyncio.gather(
        _answer("database", _query_database()), _answer("broker", _ping_broker())
    )
    return Health(database, broker, open_streams())


async def _answer(what: str, probe: Awaitable[None]) -> str:
    try:
        async with asyncio.timeout(TIMEOUT_SECONDS):
            await probe
    except TimeoutError:
        logger.warning(
            "notify: health check: the %s did not answer within %g s", what, TIMEOUT_SECONDS
        )
        return f"down: no answer within {TIMEOUT_SECONDS:g} s"
    except Exception as exc:
        logger.warning("notify: health check: the %s cannot be reached: %r", what, exc)
        return f"down: {type(exc).__name__}"
    return OK


# The database is asked in a thread of its own, not in the pool that streams replay in: a
# database that does not answer (a host that drops packets) then holds that one thread,
# never the streams'. A check made while the previous query still runs waits for that query
# instead of starting another, so a load balancer asking every second piles nothing up.
_query: Future[None] | None = None
_query_lock = threading.Lock()


async def _query_database() -> None:
    """``SELECT 1`` on the database notify reads events from: the one they are written to
    (``notify.history``), whatever a router does with other reads."""
    global _query
    with _query_lock:
        if _query is None or _query.done():
            _query = Future()
            # A daemon thread: a query stuck on a dead host never delays the process's exit.
            threading.Thread(
                target=_select_one, args=(_query,), name="notify-health", daemon=True
            ).start()
        query = _query
    # Shielded: a check that gives up must not cancel the query the next check waits for.
    await asyncio.shield(asyncio.wrap_future(query))


def _select_one(result: Future[None]) -> None:
    try:
        with connections[router.db_for_write(Event)].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except BaseException as exc:
        result.set_exception(exc)
    else:
        result.set_result(None)
    finally:
        # This thread's connections: nothing would ever reuse them.
        connections.close_all()


async def _ping_broker() -> None:
    await get_broker().ping()
