"""Idle cost of open streams: RSS, threads and database connections per open stream.

    .venv/bin/python bench/idle_streams.py [--streams 1000]

Runs daphne twice on a scratch SQLite database and the embedded broker: once with
notify's ASGI handler in front of Django (``tests.asgi``), once with the stream served by
the Django view (``tests.asgi_unwrapped``), and opens N streams to each with raw asyncio
sockets. Both are measured in the same run, so the ratio holds on a noisy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port, stop_process, wait_for_port  # noqa: E402

APPS = {
    "notify ASGI handler": "tests.asgi:application",
    "Django view (unwrapped)": "tests.asgi_unwrapped:application",
}


def proc_status(pid: int) -> tuple[int, int]:
    """(RSS in KiB, threads) of a process."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]), int(fields["Threads"])


def open_db_files(pid: int, db: str) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd) == db
        except OSError:
            pass
    return count


async def open_streams(port: int, count: int) -> list[asyncio.StreamWriter]:
    request = (
        f"GET /notify/stream/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()

    async def one() -> asyncio.StreamWriter:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
        writer.write(request)
        received = b""
        while b"notify.open" not in received:
            chunk = await reader.read(4096)
            if not chunk:
                raise ConnectionError("stream closed before notify.open")
            received += chunk
        return writer

    writers = []
    for start in range(0, count, 100):  # in waves, to stay under daphne's listen backlog
        writers += await asyncio.gather(*(one() for _ in range(min(100, count - start))))
    return writers


def measure(app: str, count: int, env: dict[str, str], db: str) -> dict[str, float]:
    port = free_port()
    command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), app]
    if shutil.which("taskset"):
        command = ["taskset", "-c", "0", *command]
    server = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process=server)

        async def run() -> dict[str, float]:
            warm = await open_streams(port, 1)  # imports, hub and first query out of the way
            await asyncio.sleep(0.5)
            rss0, threads0 = proc_status(server.pid)
            db0 = open_db_files(server.pid, db)
            writers = await open_streams(port, count)
            await asyncio.sleep(1.0)
            rss1, threads1 = proc_status(server.pid)
            db1 = open_db_files(server.pid, db)
            for writer in [*warm, *writers]:
                writer.close()
            return {
                "rss_per_stream_kb": (rss1 - rss0) / count,
                "threads": threads1 - threads0,
                "db_files": db1 - db0,
            }

        return asyncio.run(run())
    finally:
        stop_process(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="notify-bench-")
    db = os.path.join(workdir, "bench.sqlite3")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "NOTIFY_TEST_DB_NAME": db,
        "REDIS_URL": "",
        # Every stream comes from 127.0.0.1: no per-address limit.
        "NOTIFY_TEST_SETTINGS": '{"MAX_STREAMS_PER_IP": null}',
    }
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    print(f"{args.streams} idle streams on daphne, SQLite, embedded broker")
    print(f"{'served by':<26} {'RSS/stream':>11} {'+threads':>9} {'+db files':>10}")
    for name, app in APPS.items():
        result = measure(app, args.streams, env, db)
        print(
            f"{name:<26} {result['rss_per_stream_kb']:>8.1f} KB {result['threads']:>9} "
            f"{result['db_files']:>10}"
        )
    shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
