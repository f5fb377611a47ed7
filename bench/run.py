"""``make bench`` (``python -m bench.run``): every scenario of the issue, in one run, so that
the ratios between targets hold on a noisy machine. Results go to
``bench/results/<UTC time>.json`` (and ``bench/results/latest.json``) after each scenario, so
a failure keeps what was measured; then ``python -m bench.report`` draws docs/benchmarks.md.

Every target runs on one PostgreSQL: a private cluster the run starts (``bench.postgres``:
``max_connections=1200``, since django-eventstream holds a connection per open stream) and
removes at the end, or the server of ``DATABASE_URL`` when it is set.

    python -m bench.run                 # everything, the issue's sizes (about 9 min here)
    python -m bench.run --quick         # small sizes, a few minutes: does it all run?
    python -m bench.run --only latency --only idle
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from bench import accept, idle, latency, publish, pubsub, replay, storm
from bench.common import ROOT, ensure_database
from bench.postgres import describe, exit_on_sigterm, private_cluster
from bench.targets import all_targets, services

RESULTS = ROOT / "bench" / "results"
SERVERS = ("notify-daphne", "notify-uvicorn", "bare-daphne", "bare-uvicorn")
# notify's WebSocket stream, each run right after the SSE stream of the same server (the
# machine's load drifts less between neighbours): in the idle scenario, and at the first
# latency size (1k clients).
WEBSOCKET = {"notify-daphne": "notify-daphne-ws", "notify-uvicorn": "notify-uvicorn-ws"}
PEER = "eventstream-daphne"


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "idle": [200],
            "latency": [(200, 10.0, 5.0)],
            "peer_latency": (50, 10.0, 5.0),
            "accept": 300,
            "replay": 2000,
            "storm": (200, 100),
            "publish": (500, 5000),
            "pubsub": 1.0,
        }
    return {
        "idle": [1000, 10_000],
        # (clients, events/s, seconds)
        "latency": [(1000, 10.0, 10.0), (10_000, 1.0, 10.0)],
        "peer_latency": (80, 10.0, 10.0),
        "accept": 1000,
        "replay": 10_000,
        "storm": (1000, 100),
        "publish": (5000, 100_000),
        # seconds per count of subscribers
        "pubsub": 3.0,
    }


def attempt(target: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One measurement that may fail without failing its scenario (django-eventstream past
    PostgreSQL's connection limit, on a ``DATABASE_URL`` server with too few: its publisher
    cannot even connect)."""
    try:
        return run()
    except Exception as exc:
        return {"target": target, "error": f"{type(exc).__name__}: {exc}"}


def scenarios(quick: bool) -> dict[str, Callable[[], list[dict[str, Any]]]]:
    """Each scenario's runs, on the services of the environment (read here: call it once
    ``DATABASE_URL`` is set)."""
    size = sizes(quick)
    targets = all_targets()
    # The scenarios that start notify themselves (not through a Target) get the same ones.
    env = services()
    service = {
        "database_url": env["DATABASE_URL"],
        "redis_url": env["REDIS_URL"],
        "redis_prefix": env["BENCH_REDIS_PREFIX"],
    }
    servers = [targets[name] for name in SERVERS]
    # The servers with notify's WebSocket stream beside its SSE one.
    transports = [
        targets[name]
        for server in SERVERS
        for name in (server, WEBSOCKET.get(server))
        if name is not None
    ]
    peer = targets.get(PEER)

    def idle_runs() -> list[dict[str, Any]]:
        runs = [idle.run(t, n) for n in size["idle"] for t in transports]
        if peer is not None:
            # A thread and a database connection per stream (the private cluster allows
            # 1,200; a DATABASE_URL server with fewer stops it there): one size shows it.
            streams = size["idle"][0]
            runs.append(attempt(PEER, lambda: idle.run(peer, streams, connect_timeout=20.0)))
        return runs

    def latency_runs() -> list[dict[str, Any]]:
        first, *others = size["latency"]
        runs = [latency.run(t, *first) for t in transports]
        runs += [latency.run(t, c, r, s) for c, r, s in others for t in servers]
        if peer is not None:
            # Where django-eventstream serves even on a default PostgreSQL (a thread and a
            # database connection per stream: below max_connections 100), beside notify...
            small = size["peer_latency"]
            runs.append(latency.run(targets["notify-daphne"], *small))
            runs.append(attempt(PEER, lambda: latency.run(peer, *small, connect_timeout=20.0)))
            # ... and at the 1k, 1,000 connections: on the private cluster it
            # serves them; on a DATABASE_URL server with fewer, the error says so.
            big = size["latency"][0]
            runs.append(attempt(PEER, lambda: latency.run(peer, *big, connect_timeout=20.0)))
        return runs

    def accept_runs() -> list[dict[str, Any]]:
        return [accept.run(t, size["accept"]) for t in servers]

    def replay_runs() -> list[dict[str, Any]]:
        return [
            replay.run(size["replay"], server=server, **service) for server in ("daphne", "uvicorn")
        ]

    def storm_runs() -> list[dict[str, Any]]:
        clients, behind = size["storm"]
        return [
            storm.run(clients, behind, server=server, **service) for server in ("daphne", "uvicorn")
        ]

    def publish_runs() -> list[dict[str, Any]]:
        count, bulk = size["publish"]
        return [publish.run(count, bulk, **service)]

    def pubsub_runs() -> list[dict[str, Any]]:
        # On a Redis of its own, not the run's: Redis's CPU is the figure, and a shared
        # server's other clients would be counted in it.
        return [pubsub.run(seconds=size["pubsub"])]

    return {
        "idle": idle_runs,
        "latency": latency_runs,
        "accept": accept_runs,
        "replay": replay_runs,
        "storm": storm_runs,
        "publish": publish_runs,
        "pubsub": pubsub_runs,
    }


@contextmanager
def bench_database() -> Iterator[dict[str, Any]]:
    """The PostgreSQL every target of the run uses, its database created if need be: the
    server of ``DATABASE_URL`` when it is set; otherwise a private cluster (``bench.postgres``)
    for the length of the run, stopped and removed on leaving, however that happens, with
    ``DATABASE_URL`` pointing at it meanwhile (``services()`` and every process the run
    starts read it there). Yields what the results record about it."""
    if os.environ.get("DATABASE_URL"):
        url = os.environ["DATABASE_URL"]
        ensure_database(url)
        yield {"private": False, **describe(url)}
        return
    with private_cluster() as cluster:
        url = cluster.url("notify_bench")
        os.environ["DATABASE_URL"] = url
        try:
            ensure_database(url)
            yield {"private": True, **describe(url)}
        finally:
            del os.environ["DATABASE_URL"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check it runs")
    parser.add_argument("--only", action="append", help="run only this scenario (repeatable)")
    args = parser.parse_args()
    exit_on_sigterm()  # a terminated run still stops its servers and its cluster
    with bench_database() as database:
        kind = "private cluster" if database["private"] else "DATABASE_URL"
        print(
            f"bench: PostgreSQL {database['server_version']} ({kind}), {database['url']}, "
            f"max_connections {database['max_connections']}",
            flush=True,
        )
        results = run_scenarios(args.quick, args.only, database)
    if results["errors"]:
        sys.exit(1)


def run_scenarios(quick: bool, only: list[str] | None, database: dict[str, Any]) -> dict[str, Any]:
    """Run the chosen scenarios, writing the results after each; returns them."""
    chosen = scenarios(quick)
    names = only or list(chosen)
    RESULTS.mkdir(exist_ok=True)
    started = datetime.now(UTC)
    path = RESULTS / f"{started:%Y%m%dT%H%M%SZ}.json"
    results: dict[str, Any] = {
        "started": started.isoformat(),
        "quick": quick,
        "machine": {"python": platform.python_version(), "cores": os.cpu_count() or 0},
        "commands": " ".join(["python -m bench.run", *sys.argv[1:]]),
        "database": database,
        "scenarios": {},
        "scenario_seconds": {},
        "errors": {},
    }
    for name in names:
        began = time.monotonic()
        print(f"bench: {name} ...", flush=True)
        try:
            results["scenarios"][name] = chosen[name]()
        except Exception:  # one scenario failing must not lose the others' figures
            results["errors"][name] = traceback.format_exc()
            print(results["errors"][name], file=sys.stderr, flush=True)
        took = time.monotonic() - began
        results["scenario_seconds"][name] = round(took, 1)
        print(f"bench: {name} took {took:.0f} s", flush=True)
        for out in (path, RESULTS / "latest.json"):
            out.write_text(json.dumps(results, indent=1))
    print(f"bench: results in {path}; draw the report with: python -m bench.report {path}")
    return results


if __name__ == "__main__":
    main()
