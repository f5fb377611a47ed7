"""Connection acceptance: how long N clients connecting at once wait for their streams
(item 3).

    .venv/bin/python -m bench.accept [--clients 500] [--target notify-daphne ...]

For each target and each listen backlog (the server's default, then 4096): start the
server (core 0), open one stream and close it (imports and the hub out of the way), then
open N connections at once from a load generator (core 1). Reported: the time until the
last stream had its first bytes, and the connect times (connect() to first bytes).

daphne's default backlog is Twisted's 50: beyond it the kernel drops SYNs, and a dropped
client retries after 1 s, then 3 s, 7 s... An endpoint string raises it:
``daphne -e tcp:port=8000:interface=127.0.0.1:backlog=4096 project.asgi:application``
(the kernel caps it at ``net.core.somaxconn``). uvicorn's default is 2048 (``--backlog``).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from bench.loadgen import LoadGenProcess
from bench.targets import Target, get_target

DEFAULT_TARGETS = ("notify-daphne", "notify-uvicorn", "bare-daphne", "bare-uvicorn")
BACKLOGS: tuple[int | None, ...] = (None, 4096)  # None: the server's default


def somaxconn() -> int | None:
    """The kernel's cap on any listen backlog."""
    try:
        with open("/proc/sys/net/core/somaxconn") as file:
            return int(file.read())
    except OSError:
        return None


def run_once(target: Target, clients: int, backlog: int | None) -> dict[str, Any]:
    server = target.start(backlog=backlog)
    try:
        url = target.stream_url(server)
        warm = LoadGenProcess(url, 1)
        try:
            warm.wait_ready()
        finally:
            warm.close()
        time.sleep(0.5)
        load = LoadGenProcess(url, clients, all_at_once=True)
        try:
            load.wait_ready(timeout=600)
            result = load.stop()
        finally:
            load.close()
    finally:
        server.stop()
    return {
        "backlog": backlog if backlog is not None else "default",
        "opened": result["opened"],
        "failed": result["failed"],
        "open_seconds": result["open_seconds"],
        "connect_ms": result["connect_ms"],
    }


def run(
    target: Target, clients: int = 1000, backlogs: tuple[int | None, ...] = BACKLOGS
) -> dict[str, Any]:
    """Open ``clients`` streams at once on ``target``, with each listen backlog."""
    target.prepare()
    return {
        "target": target.name,
        "server": target.server,
        "clients": clients,
        "somaxconn": somaxconn(),
        "runs": [run_once(target, clients, backlog) for backlog in backlogs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", help=f"default: {' '.join(DEFAULT_TARGETS)}")
    parser.add_argument("--clients", type=int, default=500)
    args = parser.parse_args()
    for name in args.target or DEFAULT_TARGETS:
        print(json.dumps(run(get_target(name), args.clients)), flush=True)


if __name__ == "__main__":
    main()
