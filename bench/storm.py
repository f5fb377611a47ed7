"""Reconnect storm: N clients, each K events behind, reconnecting at once (issue, item 4).

    .venv/bin/python -m bench.storm [--clients 1000] [--behind 100]

What a storm looks like after a server restart or a deploy: every client was live, so
every client resumes from (about) the same recent id; meanwhile K events were published.
So all clients send the same cursor, the K-th newest event's predecessor, over a history of
``--history`` stored events on ``public:bench`` (older ones are there so that the replay
query does not read a table of K rows). The clients reconnect at once (one
``asyncio.gather`` of N connections, each sending its request as soon as it is
connected) and each reads until ``notify.catchup-end``, checking that it got its K events
once and in order; each then stays connected, as a live client would, until all are done.

The server is daphne serving ``bench.counting:application`` (the notify bench app with a
query counter) pinned to core 0, listening with a backlog of 4096 so that the storm
measures notify rather than daphne's default backlog of 50 (``bench.common``); the clients
run in this process, pinned to core 1. Database queries per reconnect are counted on the
server, every statement run through Django's cursors, by SQL text (the counts before the
storm subtracted from those after it); the statements Django's PostgreSQL backend runs to
set up a new connection do not go through them, so new connections are counted too, by
Django (``connection_created``) and by PostgreSQL (``pg_stat_database.sessions``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit

from bench.common import (
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_PREFIX,
    DEFAULT_REDIS_URL,
    cpu_seconds,
    percentile,
    start_server,
)
from bench.replay import (
    CHANNEL,
    CLIENT_CORE,
    SERVER_CORE,
    Stream,
    StreamTally,
    add_service_arguments,
    bench_env,
    django_worker,
    migrate,
    pinned_here,
    reset_events,
    store_events,
    warm_up,
)

APP = "bench.counting:application"
# Answered by bench.counting (not imported here: importing it sets up Django).
QUERIES_PATH = "/bench/queries/"
BACKLOG = 4096
# Seconds a storm may take before the clients give up (the target is 5 s).
TIMEOUT = 60.0


async def query_counts(port: int) -> dict[str, Any]:
    """The server's query counts so far (``bench.counting``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET {QUERIES_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    writer.write(request.encode("ascii"))
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{QUERIES_PATH} answered {head[:40]!r}")
    return json.loads(body)


def database_sessions(database_url: str) -> int:
    """Sessions (connections) PostgreSQL has counted for the database of ``database_url``
    (pg_stat_database): the server's own count of the connections notify opened, to set
    beside ``bench.counting``'s."""
    import psycopg  # the load generator's only database access: PostgreSQL's own counters

    name = urlsplit(database_url).path.lstrip("/")
    conninfo = database_url.replace("postgres://", "postgresql://", 1)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        # A backend publishes its counts at most once a second (and when it exits): the wait
        # covers the last of notify's connections.
        time.sleep(1.1)
        row = connection.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s",
            (name,),
        ).fetchone()
    assert row is not None
    return int(row[0])


async def reconnect(
    port: int, cursor: int, opened: list[Stream], deadline: float
) -> dict[str, Any]:
    """One client of the storm: its times (perf_counter) and what it received. Its stream
    is left open, as a live client's would be, in ``opened``."""
    head = ended = None
    tally = StreamTally()
    status = 0
    try:
        async with asyncio.timeout_at(deadline):
            stream = await Stream.open(port, CHANNEL, cursor)
            opened.append(stream)
            tally = stream.tally
            await stream.read_head()
            head = time.perf_counter()
            status = stream.status
            if status == 200 and await stream.read_until(
                lambda tally: tally.seen("notify.catchup-end")
            ):
                ended = time.perf_counter()
    except TimeoutError:
        pass  # reported as not caught up
    return {
        "status": status,
        "head": head,
        "ended": ended,
        "events": tally.events,
        "last_id": tally.last_id,
        "ordered": tally.ordered,
    }


async def storm(
    port: int, pid: int, clients: int, cursor: int, database_url: str
) -> dict[str, Any]:
    """Reconnect ``clients`` clients to the server at ``port`` (process ``pid``) at once."""
    await warm_up(port)  # the hub's start and first query are not part of the storm
    sessions_before = await asyncio.to_thread(database_sessions, database_url)
    before = await query_counts(port)
    opened: list[Stream] = []
    cpu_before = cpu_seconds(pid)
    started = time.perf_counter()
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    try:
        results = await asyncio.gather(
            *(reconnect(port, cursor, opened, deadline) for _ in range(clients)),
            return_exceptions=True,
        )
        # Every client has its catch-up (or gave up): the counts are complete.
        cpu = cpu_seconds(pid) - cpu_before
        after = await query_counts(port)
        sessions_after = await asyncio.to_thread(database_sessions, database_url)
    finally:
        for stream in opened:
            stream.close()
    return {
        "started": started,
        "before": before,
        "after": after,
        "clients": results,
        "sessions": sessions_after - sessions_before,
        "cpu": cpu,
    }


def run(
    clients: int = 1000,
    behind: int = 100,
    history: int = 10_000,
    database_url: str = DEFAULT_DATABASE_URL,
    redis_url: str = DEFAULT_REDIS_URL,
    redis_prefix: str = DEFAULT_REDIS_PREFIX,
    server: str = "daphne",
) -> dict[str, Any]:
    """Reconnect ``clients`` clients at once, each ``behind`` events behind; returns the time
    until all have caught up and the server's database queries per reconnect."""
    env = bench_env(database_url, redis_url, redis_prefix)
    migrate(env)
    with django_worker(env) as worker:
        worker.submit(reset_events).result()
        _, last_id = worker.submit(store_events, max(history, behind)).result()
    cursor = last_id - behind
    handle = start_server(server, APP, env, core=SERVER_CORE, backlog=BACKLOG)
    try:
        with pinned_here(CLIENT_CORE):
            outcome = asyncio.run(storm(handle.port, handle.pid, clients, cursor, database_url))
    finally:
        handle.stop()
    return _report(outcome, clients, behind, cursor, last_id, server)


def _report(
    outcome: dict[str, Any],
    clients: int,
    behind: int,
    cursor: int,
    last_id: int,
    server: str,
) -> dict[str, Any]:
    started = outcome["started"]
    results = [result for result in outcome["clients"] if isinstance(result, dict)]
    caught_up = [
        result
        for result in results
        if result["ended"] is not None
        and result["status"] == 200
        and result["ordered"]
        and result["events"] == behind
        and result["last_id"] == last_id
    ]
    finished = [result["ended"] - started for result in caught_up]
    headers = [result["head"] - started for result in results if result["head"] is not None]
    before, after = outcome["before"], outcome["after"]
    by_sql = {
        sql: count - before["by_sql"].get(sql, 0)
        for sql, count in after["by_sql"].items()
        if count - before["by_sql"].get(sql, 0)
    }
    queries = after["queries"] - before["queries"]
    seconds = max(finished) if len(caught_up) == clients else None
    return {
        "scenario": "storm",
        "server": server,
        "app": APP,
        "backlog": BACKLOG,
        "clients": clients,
        "events_behind": behind,
        "cursor": cursor,
        "cursors": "same: every client resumes from the same id, as after a server restart",
        "caught_up": len(caught_up),
        "errors": [repr(result) for result in outcome["clients"] if not isinstance(result, dict)],
        # From the first connection attempt to the last client's notify.catchup-end.
        "all_caught_up_seconds": seconds,
        "caught_up_p50_seconds": percentile(finished, 50),
        "caught_up_p99_seconds": percentile(finished, 99),
        "response_head_max_seconds": max(headers, default=None),
        # /proc's CPU times tick every 10 ms.
        "server_cpu_seconds": outcome["cpu"],
        "server_cpu_ms_per_reconnect": outcome["cpu"] / clients * 1e3,
        "queries": queries,
        "queries_per_reconnect": queries / clients,
        "connections_opened": after["connections"] - before["connections"],
        "connections_per_reconnect": (after["connections"] - before["connections"]) / clients,
        # PostgreSQL's own count (pg_stat_database), the load generator's readings included.
        "database_sessions_per_reconnect": outcome["sessions"] / clients,
        "queries_by_sql": dict(sorted(by_sql.items(), key=lambda item: -item[1])),
        "target_seconds": 5.0,
        "target_queries_per_reconnect": 1,
        "target_met": seconds is not None and seconds <= 5.0 and queries <= clients,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--behind", type=int, default=100)
    parser.add_argument("--history", type=int, default=10_000)
    parser.add_argument("--server", choices=("daphne", "uvicorn"), default="daphne")
    add_service_arguments(parser)
    args = parser.parse_args()
    result = run(
        args.clients,
        args.behind,
        args.history,
        args.database_url,
        args.redis_url,
        args.redis_prefix,
        args.server,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
