"""Replay: events/s to one client reconnecting N events behind (issue, item 4).

    .venv/bin/python -m bench.replay [--events 10000] [--repeats 3]

Stores N events on ``public:bench`` with ``notify.api.publish_many`` before the server
starts (so they are history, not live events), starts daphne serving
``bench.asgi:application`` pinned to core 0, and from this process, pinned to core 1,
reconnects with ``Last-Event-ID`` just before the first of them. The figure is the time
from sending the request to receiving ``notify.catchup-end``, as events/s, with the
server's CPU time per replayed event (which does not depend on the client's speed).

The client is a raw asyncio socket that decodes the chunked response and counts the
``id:`` lines of events, checking that each arrives once and in order. ``bench.storm``
and ``bench.publish`` use the same client and the same helpers for the database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from typing import Any

from bench.common import (
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_PREFIX,
    DEFAULT_REDIS_URL,
    ROOT,
    bench_payload,
    cpu_seconds,
    ensure_database,
    start_server,
)

CHANNEL = "public:bench"
APP = "bench.asgi:application"
SERVER_CORE = 0
CLIENT_CORE = 1
STREAM_PATH = "/notify/stream/"
# Rows per publish_many when storing history: one INSERT and one Redis round trip each.
STORE_BATCH = 1000

# -- the environment and Django work, in processes of their own ------------------------------


def bench_env(database_url: str, redis_url: str, redis_prefix: str) -> dict[str, str]:
    """The environment of every process that runs notify for the bench (``bench.settings``)."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "BENCH_REDIS_PREFIX": redis_prefix,
        "PYTHONPATH": str(ROOT),
    }


def migrate(env: Mapping[str, str]) -> None:
    """Create the database of ``DATABASE_URL`` if need be, and notify's tables in it."""
    ensure_database(env["DATABASE_URL"])
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=dict(env), check=True
    )


def _setup_django(env: Mapping[str, str]) -> None:
    os.environ.update(env)
    import django

    django.setup()


@contextlib.contextmanager
def django_worker(env: Mapping[str, str], processes: int = 1) -> Iterator[ProcessPoolExecutor]:
    """Processes running Django with ``bench.settings``: the caller (the load generator, or
    an orchestrator running several targets) never configures Django itself, so the settings
    of one target cannot leak into another. Submit module-level functions to it."""
    executor = ProcessPoolExecutor(
        processes, mp_context=get_context("spawn"), initializer=_setup_django, initargs=(env,)
    )
    try:
        yield executor
    finally:
        executor.shutdown()


def reset_events() -> None:
    """Empty notify's table, ids restarting at 1 (in a Django worker)."""
    from django.db import connection

    from notify.models import Event

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {Event._meta.db_table} RESTART IDENTITY")


def store_events(count: int, channel: str = CHANNEL) -> tuple[int, int]:
    """Publish ``count`` bench payloads on ``channel`` in batches of ``STORE_BATCH`` (in a
    Django worker); returns (first id, last id)."""
    from notify.api import prepare, publish_many

    first = last = 0
    for start in range(0, count, STORE_BATCH):
        batch = [
            prepare(channel, bench_payload(n))
            for n in range(start, min(count, start + STORE_BATCH))
        ]
        stored = publish_many(batch)
        first = first or stored[0].id
        last = stored[-1].id
    return first, last


def replay_batch() -> int:
    """notify's ``REPLAY_BATCH`` under these settings: rows per replay query."""
    from notify.conf import notify_settings

    return notify_settings.REPLAY_BATCH


# -- the client: a raw asyncio socket reading one stream --------------------------------------


class ChunkedDecoder:
    """Incremental decoder of an HTTP/1.1 chunked body (daphne and uvicorn both send a
    stream chunked, one chunk per ASGI body message)."""

    def __init__(self) -> None:
        self.raw = bytearray()
        self.finished = False

    def feed(self, data: bytes) -> bytes:
        self.raw += data
        out = []
        raw = self.raw
        while not self.finished:
            eol = raw.find(b"\r\n")
            if eol < 0:
                break
            size = int(raw[:eol].split(b";", 1)[0], 16)
            if size == 0:
                self.finished = True
                break
            end = eol + 2 + size
            if len(raw) < end + 2:
                break
            out.append(bytes(raw[eol + 2 : end]))
            del raw[: end + 2]
        return b"".join(out)


# The start of every frame that carries an id: ``id: N`` then ``event: NAME``. A data line
# never starts with ``id:``, and the ``retry:`` block's id line is followed by a blank line.
_FRAME_HEAD = re.compile(rb"^id: (\d+)\nevent: ([^\n]+)\n", re.MULTILINE)


class StreamTally:
    """What one stream delivered: events (``event: message``) counted and checked for order,
    and the control events seen."""

    def __init__(self) -> None:
        self.pending = b""
        self.events = 0
        self.first_id: int | None = None
        self.last_id = 0
        # Every event id greater than the one before it (no duplicate, no reordering).
        self.ordered = True
        self.controls: dict[str, int] = {}
        self.ids: list[int] | None = None

    def keep_ids(self) -> None:
        """Record every event id, for a check against the database afterwards."""
        self.ids = []

    def feed(self, body: bytes) -> None:
        text = self.pending + body
        cut = text.rfind(b"\n\n") + 2  # frames are whole up to the last blank line
        self.pending = text[cut:]
        for match in _FRAME_HEAD.finditer(text, 0, cut):
            name = match.group(2)
            if name == b"message":
                event_id = int(match.group(1))
                if event_id <= self.last_id:
                    self.ordered = False
                if self.first_id is None:
                    self.first_id = event_id
                self.last_id = event_id
                self.events += 1
                if self.ids is not None:
                    self.ids.append(event_id)
            else:
                key = name.decode("ascii")
                self.controls[key] = self.controls.get(key, 0) + 1

    def seen(self, control: str) -> bool:
        return control in self.controls


def stream_request(port: int, channel: str, cursor: int | None) -> bytes:
    lines = [
        f"GET {STREAM_PATH}?channel={channel} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Accept: text/event-stream",
    ]
    if cursor is not None:
        lines.append(f"Last-Event-ID: {cursor}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


class Stream:
    """One open SSE response, read from a raw socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.decoder: ChunkedDecoder | None = None
        self.tally = StreamTally()

    @classmethod
    async def open(cls, port: int, channel: str = CHANNEL, cursor: int | None = None) -> Stream:
        """Connect and send the request; ``read_head()`` reads the answer."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        stream = cls(reader, writer)
        writer.write(stream_request(port, channel, cursor))
        return stream

    async def read_head(self) -> None:
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split(" ", 2)[1])
        chunked = any(
            line.lower().startswith("transfer-encoding:") and "chunked" in line.lower()
            for line in header_lines
        )
        self.decoder = ChunkedDecoder() if chunked else None

    async def read_until(self, done: Callable[[StreamTally], bool]) -> bool:
        """Read until ``done(tally)`` holds (True) or the response ends (False)."""
        tally = self.tally
        while not done(tally):
            data = await self.reader.read(1 << 18)
            if not data:
                return False
            if self.decoder is not None:
                data = self.decoder.feed(data)
            tally.feed(data)
            if self.decoder is not None and self.decoder.finished:
                return done(tally)
        return True

    def close(self) -> None:
        self.writer.close()


@dataclass
class CatchUp:
    """One reconnection, timed on ``time.perf_counter()``."""

    status: int
    #: When the request was written (after the TCP connection was made).
    sent: float
    #: When ``notify.catchup-end`` was read; NaN if it never came.
    ended: float
    events: int
    first_id: int | None
    last_id: int
    ordered: bool


async def catch_up(port: int, cursor: int, channel: str = CHANNEL) -> CatchUp:
    """Reconnect with ``Last-Event-ID: cursor`` and read until ``notify.catchup-end``."""
    stream = await Stream.open(port, channel, cursor)
    sent = time.perf_counter()
    try:
        await stream.read_head()
        ok = stream.status == 200 and await stream.read_until(
            lambda tally: tally.seen("notify.catchup-end")
        )
        ended = time.perf_counter() if ok else float("nan")
    finally:
        stream.close()
    tally = stream.tally
    return CatchUp(
        stream.status, sent, ended, tally.events, tally.first_id, tally.last_id, tally.ordered
    )


async def warm_up(port: int, channel: str = CHANNEL) -> None:
    """Open one stream without a cursor until ``notify.open``: the server's hub starts (its
    first query, its Redis subscription) before anything is measured."""
    stream = await Stream.open(port, channel)
    try:
        await stream.read_head()
        if stream.status != 200 or not await stream.read_until(
            lambda tally: tally.seen("notify.open")
        ):
            raise RuntimeError(f"warm-up stream failed (HTTP {stream.status})")
    finally:
        stream.close()


@contextlib.contextmanager
def pinned_here(core: int) -> Iterator[None]:
    """Run this process (the load generator) on ``core`` only, then as before."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# -- the scenario -----------------------------------------------------------------------------


def run(
    events: int = 10_000,
    repeats: int = 3,
    database_url: str = DEFAULT_DATABASE_URL,
    redis_url: str = DEFAULT_REDIS_URL,
    redis_prefix: str = DEFAULT_REDIS_PREFIX,
    server: str = "daphne",
) -> dict[str, Any]:
    """Replay ``events`` stored events to one reconnecting client, ``repeats`` times (each
    reconnection from the same cursor); returns the figures of each and of the best."""
    env = bench_env(database_url, redis_url, redis_prefix)
    migrate(env)
    with django_worker(env) as worker:
        worker.submit(reset_events).result()
        first_id, last_id = worker.submit(store_events, events).result()
        batch = worker.submit(replay_batch).result()
    handle = start_server(server, APP, env, core=SERVER_CORE)
    try:
        with pinned_here(CLIENT_CORE):
            asyncio.run(warm_up(handle.port))
            attempts = []
            for _ in range(repeats):
                cpu_before = cpu_seconds(handle.pid)
                result = asyncio.run(catch_up(handle.port, first_id - 1))
                cpu = cpu_seconds(handle.pid) - cpu_before
                attempts.append(_attempt(result, cpu, first_id, last_id))
    finally:
        handle.stop()
    complete = [attempt for attempt in attempts if attempt["complete"]]
    best = max(complete, key=lambda attempt: attempt["events_per_second"], default=None)
    return {
        "scenario": "replay",
        "server": server,
        "app": APP,
        "events_behind": events,
        "replay_batch": batch,
        "attempts": attempts,
        "best": best,
        "target_events_per_second": 20_000,
        "target_met": best is not None and best["events_per_second"] >= 20_000,
    }


def _attempt(result: CatchUp, cpu: float, first_id: int, last_id: int) -> dict[str, Any]:
    seconds = result.ended - result.sent
    complete = (
        result.status == 200
        and result.ordered
        and result.events == last_id - first_id + 1
        and result.first_id == first_id
        and result.last_id == last_id
    )
    return {
        **asdict(result),
        "seconds": seconds,
        "events_per_second": result.events / seconds if seconds > 0 else float("nan"),
        # /proc's CPU times tick every 10 ms: read this as ±0.01 s.
        "server_cpu_seconds": cpu,
        "server_cpu_us_per_event": cpu / result.events * 1e6 if result.events else None,
        "complete": complete,
    }


def add_service_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every scenario of this family shares: where PostgreSQL and Redis are."""
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL),
        help="PostgreSQL database (created if missing; its events are deleted)",
    )
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--redis-prefix", default=DEFAULT_REDIS_PREFIX)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--server", choices=("daphne", "uvicorn"), default="daphne")
    add_service_arguments(parser)
    args = parser.parse_args()
    result = run(
        args.events,
        args.repeats,
        args.database_url,
        args.redis_url,
        args.redis_prefix,
        args.server,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
