"""A private PostgreSQL cluster for the bench: ``python -m bench.run`` starts one, and runs
every target on it, unless ``DATABASE_URL`` names a server to use instead.

Why: django-eventstream, the peer the bench measures, holds a thread and a PostgreSQL
connection for every open stream, so the issue's 1,000 clients need 1,000 connections: far
past a default server's ``max_connections`` (100), where it delivers nothing. notify holds a
pool of 2 to 8 whatever its streams. The cluster is initialised into a temporary directory
with ``max_connections=1200`` (1,000 eventstream streams, its publisher, and room for the
rest) and every other setting at its default; no shared server's configuration is touched.
How it is set up and run (as the ``postgres`` OS user under root) is ``tests.postgres``, which
the tests' private clusters share.

    with private_cluster() as cluster:
        cluster.url("notify_bench")     # postgres://postgres@127.0.0.1:<port>/notify_bench

    python -m bench.postgres            # start one, print its URL, stop it on Ctrl-C
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from tests import postgres

# Debian's PostgreSQL 15 (postgresql-15); BENCH_PG_BIN names another bin directory.
PG_BIN = Path(os.environ.get("BENCH_PG_BIN", str(postgres.PG_BIN)))
MAX_CONNECTIONS = 1200


@contextmanager
def private_cluster(
    max_connections: int = MAX_CONNECTIONS,
) -> Iterator[postgres.PrivateCluster]:
    """A started ``PrivateCluster``, stopped and removed on leaving, however that happens."""
    missing = postgres.missing_binaries(PG_BIN)
    if missing:
        raise postgres.ClusterError(
            f"{', '.join(map(str, missing))} missing: install postgresql-15, set BENCH_PG_BIN "
            "to PostgreSQL's bin directory, or set DATABASE_URL"
        )
    with postgres.private_cluster(max_connections, PG_BIN) as cluster:
        yield cluster


def describe(url: str) -> dict[str, Any]:
    """What a run records about its database: the URL without its password, the server's
    version and its ``max_connections``."""
    import psycopg

    parts = urlsplit(url)
    if parts.password is not None:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        shown = parts._replace(netloc=netloc).geturl()
    else:
        shown = url
    conninfo = url.replace("postgres://", "postgresql://", 1)
    with psycopg.connect(conninfo, connect_timeout=10) as connection:
        row = connection.execute(
            "SELECT current_setting('max_connections'), current_setting('server_version')"
        ).fetchone()
    assert row is not None
    return {"url": shown, "max_connections": int(row[0]), "server_version": row[1]}


def exit_on_sigterm() -> None:
    """Make SIGTERM raise SystemExit, so that a terminated process still stops and removes
    its cluster (by default SIGTERM ends Python at once, without ``finally``; postgres
    would still get its parent-death signal, but the directory would stay)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def main() -> None:
    exit_on_sigterm()
    with private_cluster() as cluster:
        print(f"DATABASE_URL={cluster.url('notify_bench')}", flush=True)
        print(f"(data in {cluster.directory}; Ctrl-C stops it and removes it)", file=sys.stderr)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
