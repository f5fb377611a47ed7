"""Fan-out latency, publish to client, and the server's CPU time per delivery (items 2, 6).

    .venv/bin/python -m bench.latency [--clients 200] [--rate 10] [--seconds 5] \\
        [--target notify-daphne ...]

For each target: start its server (core 0, backlog 4096), open N streams from a load
generator (core 1), then publish R events/s for D seconds from the target's publisher
(core 1). Each event carries its publish time; the load generator records receive time
minus publish time for every event on every stream, and counts events per stream: every
event must reach every stream.

The server's CPU time (/proc/<pid>/stat) from just before publishing until the last event
arrived, divided by the deliveries, is the figure that compares servers independently of
the load generator's speed; latency includes the load generator's reading, so read it as
a ratio between targets measured alike.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from bench.common import cpu_seconds
from bench.loadgen import LoadGenProcess
from bench.targets import STREAM_TARGETS, Target, get_target

DEFAULT_TARGETS = STREAM_TARGETS
# Seconds between the last connection opening and the first publish, so that the latency
# is not that of a server still busy accepting.
SETTLE = 1.0
# How long after the last event is due the last stream may still be waiting for it.
GRACE = 30.0


def run(
    target: Target,
    clients: int = 1000,
    rate: float = 10.0,
    seconds: float = 10.0,
    wave: int = 100,
    connect_timeout: float = 60.0,
) -> dict[str, Any]:
    """``clients`` streams, ``rate`` events/s for ``seconds``: latency and CPU per delivery.
    Streams without their first bytes after ``connect_timeout`` seconds count as failed and
    are left out of the expected deliveries."""
    count = max(1, round(rate * seconds))
    target.prepare()
    server = target.start(backlog=4096)
    load = None
    publisher = None
    try:
        load = LoadGenProcess(
            target.stream_url(server),
            clients,
            events=count,
            duration=SETTLE + seconds + GRACE,
            wave=wave,
            connect_timeout=connect_timeout,
        )
        load.wait_ready(timeout=600)
        time.sleep(SETTLE)
        cpu_before = cpu_seconds(server.pid)
        started = time.monotonic()
        publisher = target.start_publisher(rate, count)
        result = load.result(timeout=SETTLE + seconds + GRACE + 60)
        elapsed = time.monotonic() - started
        # Before the clients leave: their disconnections are no part of the fan-out.
        cpu = cpu_seconds(server.pid) - cpu_before
        published_output, _ = publisher.communicate(timeout=60)
        published = json.loads(published_output.strip().splitlines()[-1])
    finally:
        if publisher is not None and publisher.poll() is None:
            publisher.kill()
            publisher.wait()
        if load is not None:
            load.close()
        server.stop()
    events = result["events"]
    open_streams = result["opened"]
    expected = open_streams * count
    return {
        "target": target.name,
        "server": target.server,
        "clients": clients,
        "open": open_streams,
        "failed": result["failed"],
        "closed_early": result["closed_early"],
        "rate": rate,
        "events_published": published["published"],
        "publisher_max_late_ms": round(published["max_late_seconds"] * 1000, 1),
        "deliveries_expected": expected,
        "deliveries": events["total"],
        "all_delivered": events["total"] == expected and result["closed_early"] == 0,
        "per_stream_min": events["per_stream_min"],
        "per_stream_max": events["per_stream_max"],
        "latency_ms": result["latency_ms"],
        "spread_ms": result["spread_ms"],
        "publish_ms": published.get("publish_ms"),
        "server_cpu_seconds": round(cpu, 2),
        "cpu_us_per_delivery": round(cpu / events["total"] * 1e6, 1) if events["total"] else None,
        "seconds": round(elapsed, 2),
        "loadgen_cpu_seconds": result["loadgen_cpu_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", help=f"default: {' '.join(DEFAULT_TARGETS)}")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to publish")
    args = parser.parse_args()
    for name in args.target or DEFAULT_TARGETS:
        result = run(get_target(name), args.clients, args.rate, args.seconds)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
