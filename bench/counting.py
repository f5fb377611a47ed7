"""The notify bench application with a database query counter, for ``bench.storm``.

    daphne bench.counting:application

Serves ``bench.asgi:application`` unchanged, and counts every query Django runs on any
connection of the process: a ``connection.execute_wrapper`` is installed on each connection
as it is opened (the ``connection_created`` signal), since notify runs its queries in a
thread pool where each thread has connections of its own. ``GET /bench/queries/`` is
answered here, before notify and Django, with the counts so far as JSON::

    {"queries": 2003, "connections": 2001, "by_sql": {"SELECT MIN(...": 1001, ...}}

``by_sql`` counts each statement's SQL text with its placeholders (not its parameters), so
the queries of a reconnection can be told from the hub's own (its reconciling read).
Counting costs a lock per query; the storm compares the counts before and after.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from django.db.backends.signals import connection_created

from bench.asgi import application as notify_application

QUERIES_PATH = "/bench/queries/"


class QueryCounter:
    """Queries and new connections, counted from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_sql: Counter[str] = Counter()
        self.connections = 0

    def wrap(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        """A Django execute wrapper (``connection.execute_wrapper``)."""
        with self._lock:
            self.by_sql[sql] += 1
        return execute(sql, params, many, context)

    def on_connection_created(self, sender: Any, connection: Any, **kwargs: Any) -> None:
        with self._lock:
            self.connections += 1
        # A thread's connection object is reused after close(), and connects again: install
        # the wrapper once, or each query would be counted once per reconnection.
        if self.wrap not in connection.execute_wrappers:
            connection.execute_wrappers.append(self.wrap)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "queries": sum(self.by_sql.values()),
                "connections": self.connections,
                "by_sql": dict(self.by_sql),
            }


counter = QueryCounter()
# weak=False: the receiver is a bound method, which a weak reference would let go.
connection_created.connect(counter.on_connection_created, weak=False)


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http" and scope["path"] == QUERIES_PATH:
        body = json.dumps(counter.snapshot()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await notify_application(scope, receive, send)
