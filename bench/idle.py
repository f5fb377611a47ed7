"""Idle cost of open streams: memory, threads and database connections (items 1 and 6).

    .venv/bin/python -m bench.idle [--streams 200] [--target notify-daphne ...]

For each target: start its server (pinned to core 0, listen backlog 4096), open a few
warm-up streams and keep them (imports, the hub, the thread pool and the first queries are
then out of the way), read the server's RSS, threads and database connections, open N more
streams in waves from a load generator on core 1, let them settle, and read them again.
The figures per stream are the differences divided by N.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, NamedTuple

from bench.common import db_connections, proc_status
from bench.loadgen import LoadGenProcess
from bench.targets import STREAM_TARGETS, Target, get_target

DEFAULT_TARGETS = STREAM_TARGETS


class Snapshot(NamedTuple):
    rss_kib: int
    threads: int
    db_connections: int | None  # None: the target has no database


def snapshot(pid: int, database: str | None) -> Snapshot:
    rss_kib, threads = proc_status(pid)
    connections = None if database is None else db_connections(pid, database)
    return Snapshot(rss_kib, threads, connections)


def run(
    target: Target,
    streams: int = 1000,
    warmup: int = 10,
    wave: int = 100,
    settle: float = 2.0,
    connect_timeout: float = 60.0,
) -> dict[str, Any]:
    """Open ``streams`` idle streams on ``target`` after ``warmup`` others; what they cost.
    A connection without its first bytes after ``connect_timeout`` seconds counts as failed
    (after a wave that opened none, the load generator tries no more)."""
    target.prepare()
    server = target.start(backlog=4096)
    clients: list[LoadGenProcess] = []
    try:
        url = target.stream_url(server)
        clients.append(LoadGenProcess(url, warmup, wave=warmup))
        clients[-1].wait_ready()
        time.sleep(settle)
        before = snapshot(server.pid, target.database)
        clients.append(LoadGenProcess(url, streams, wave=wave, connect_timeout=connect_timeout))
        clients[-1].wait_ready(timeout=600)
        time.sleep(settle)
        after = snapshot(server.pid, target.database)
        # Read after the snapshot: whether every stream was still open when it was taken.
        load = clients[-1].stop()
    finally:
        for client in clients:
            client.close()
        server.stop()
    opened = load["opened"] - load["closed_early"]
    return {
        "target": target.name,
        "server": target.server,
        "streams": streams,
        "open": opened,
        "failed": load["failed"],
        "open_seconds": load["open_seconds"],
        "before": before._asdict(),
        "after": after._asdict(),
        "rss_per_stream_kib": round((after.rss_kib - before.rss_kib) / opened, 2)
        if opened
        else None,
        "threads_added": after.threads - before.threads,
        "db_connections_added": None
        if after.db_connections is None or before.db_connections is None
        else after.db_connections - before.db_connections,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", help=f"default: {' '.join(DEFAULT_TARGETS)}")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--wave", type=int, default=100)
    args = parser.parse_args()
    for name in args.target or DEFAULT_TARGETS:
        print(json.dumps(run(get_target(name), args.streams, wave=args.wave)), flush=True)


if __name__ == "__main__":
    main()
