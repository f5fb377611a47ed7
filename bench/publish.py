"""Publish throughput on PostgreSQL, ordering guarantee on (issue, item 5).

    .venv/bin/python -m bench.publish [--count 1000] [--bulk 20000]

Three phases, on an emptied table:

1. one process calling ``notify.publish("public:bench", payload)`` ``--count`` times;
2. four processes doing the same at once (``--count`` each): on PostgreSQL every publish
   takes notify's advisory lock (``notify.api``), so publishers commit one at a time, in id
   order;
3. bulk: ``manage.py send_event --stdin`` reading ``--bulk`` lines (its default batch of
   500 lines per transaction).

Each publish is its own transaction (autocommit, no ``atomic`` around it). Publishers are
processes of their own running Django with ``bench.settings``, released together by a
barrier; their rate is the publishes of the phase over the time from the first start to the
last finish. Publishers are not pinned (PostgreSQL does most of the work, on whichever core
is free).

Ordering is checked during phases 1 and 2 by a subscriber, as a browser would see it: one
stream opened before the phase on daphne (``bench.asgi:application``, core 0), read by this
process (core 1), must receive every event of the phase exactly once with ids strictly
increasing, and its ids must be exactly those the table holds. The notices on Redis are
recorded too: they leave each publisher after its commit, outside the lock, so across
processes they may arrive out of id order; the stream's hub puts them back in order. After
phase 3 the table must hold exactly the lines sent, with consecutive ids.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis

from bench.common import (
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_PREFIX,
    DEFAULT_REDIS_URL,
    ROOT,
    bench_payload,
    start_server,
)
from bench.replay import (
    APP,
    CHANNEL,
    CLIENT_CORE,
    SERVER_CORE,
    Stream,
    _setup_django,
    add_service_arguments,
    bench_env,
    django_worker,
    migrate,
    pinned_here,
    reset_events,
)

TARGET_PER_SECOND = 1000
# Lines per transaction for send_event --stdin: its default, named so the report shows it.
BULK_BATCH = 500
# Seconds the subscriber may lag behind the last publish before the check fails.
DELIVERY_TIMEOUT = 30.0


# -- in the publisher processes -----------------------------------------------------------------


def _publisher(
    env: Mapping[str, str],
    count: int,
    first: int,
    barrier: Any,
    results: Any,
) -> None:
    """One publishing process: ``count`` calls of ``notify.publish``, one event each."""
    # Spawned by a load generator pinned to its core: publishers may run anywhere.
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    _setup_django(env)
    from django.db import connection

    import notify

    connection.ensure_connection()  # connecting is not publishing
    barrier.wait()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    for n in range(first, first + count):
        notify.publish(CHANNEL, bench_payload(n))
    ended = time.monotonic()
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (usage.ru_utime + usage.ru_stime)
    results.put({"started": started, "ended": ended, "count": count, "cpu_seconds": cpu})


def stored_ids(after: int) -> list[int]:
    """Ids of the bench channel's events above ``after``, in id order (in a Django worker)."""
    from notify.models import Event

    rows = Event.objects.filter(channel=CHANNEL, id__gt=after).order_by("id")
    return list(rows.values_list("id", flat=True))


def newest_id() -> int:
    from notify.history import id_bounds

    return id_bounds()[1] or 0


# -- in this process ----------------------------------------------------------------------------


def publish_from(env: Mapping[str, str], processes: int, count: int, first: int) -> dict[str, Any]:
    """Run ``processes`` publishers of ``count`` events each; their combined rate."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    workers = [
        context.Process(
            target=_publisher, args=(env, count, first + index * count, barrier, results)
        )
        for index in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        reports = [results.get(timeout=600) for _ in workers]
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
    seconds = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
    total = sum(r["count"] for r in reports)
    return {
        "processes": processes,
        "publishes": total,
        "seconds": seconds,
        "publishes_per_second": total / seconds,
        "per_process_per_second": [r["count"] / (r["ended"] - r["started"]) for r in reports],
        "publisher_cpu_us_per_publish": sum(r["cpu_seconds"] for r in reports) / total * 1e6,
    }


async def notice_ids(redis_url: str, prefix: str, ready: asyncio.Event, ids: list[int]) -> None:
    """Record the ids of the notices on Redis in the order they arrive (until cancelled)."""
    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(f"{prefix}:events")
        ready.set()
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == "message":
                # A notice is "<id> <channel>\n<frame>" (notify.broker.base.encode_notice).
                ids.append(int(message["data"].split(b" ", 1)[0]))
    finally:
        await pubsub.aclose()
        await client.aclose()


def out_of_order(ids: list[int]) -> int:
    """How many ids arrived after a greater one."""
    late, highest = 0, 0
    for event_id in ids:
        if event_id < highest:
            late += 1
        highest = max(highest, event_id)
    return late


async def checked_phase(
    port: int,
    env: Mapping[str, str],
    processes: int,
    count: int,
    first: int,
) -> dict[str, Any]:
    """One phase of publishing with a stream and a Redis subscriber watching it."""
    stream = await Stream.open(port, CHANNEL)
    notices: list[int] = []
    subscribed = asyncio.Event()
    recorder = asyncio.create_task(
        notice_ids(env["REDIS_URL"], env["BENCH_REDIS_PREFIX"], subscribed, notices)
    )
    try:
        await stream.read_head()
        if stream.status != 200 or not await stream.read_until(
            lambda tally: tally.seen("notify.open")
        ):
            raise RuntimeError(f"the checking stream did not open (HTTP {stream.status})")
        await subscribed.wait()
        stream.tally.keep_ids()
        expected = processes * count
        reading = asyncio.create_task(stream.read_until(lambda tally: tally.events >= expected))
        rate = await asyncio.to_thread(publish_from, env, processes, count, first)
        try:
            await asyncio.wait_for(reading, DELIVERY_TIMEOUT)
        except TimeoutError:
            pass  # reported below: the stream got fewer than expected
    finally:
        stream.close()
        recorder.cancel()
        await asyncio.gather(recorder, return_exceptions=True)
    return {
        **rate,
        "streamed_ids": stream.tally.ids,
        "stream_ordered": stream.tally.ordered,
        "redis_ids": notices,
    }


def verify(phase: dict[str, Any], stored: list[int]) -> dict[str, Any]:
    """The ordering verdict of a phase: what the stream got against what the table holds."""
    streamed = phase.pop("streamed_ids") or []
    redis_ids = phase.pop("redis_ids")
    ordered = phase.pop("stream_ordered")
    return {
        **phase,
        "stored": len(stored),
        "streamed": len(streamed),
        "stream_ids_strictly_increasing": ordered,
        "stream_ids_equal_stored_ids": streamed == stored,
        "redis_notices": len(redis_ids),
        "redis_notices_out_of_order": out_of_order(redis_ids),
        "ordering_intact": ordered and streamed == stored and len(stored) == phase["publishes"],
    }


def bulk(env: Mapping[str, str], lines: int, first: int) -> dict[str, Any]:
    """``manage.py send_event --stdin`` with ``lines`` events; its rate with and without the
    command's start-up (Django set-up, measured by a run with empty input)."""
    command = [
        sys.executable,
        "manage.py",
        "send_event",
        "--stdin",
        "--batch-size",
        str(BULK_BATCH),
    ]
    started = time.monotonic()
    subprocess.run(command, cwd=ROOT, env=dict(env), input=b"", check=True, capture_output=True)
    startup = time.monotonic() - started
    with tempfile.TemporaryFile() as source:
        for n in range(first, first + lines):
            line = {"channel": CHANNEL, "data": bench_payload(n)}
            source.write(json.dumps(line).encode() + b"\n")
        source.seek(0)
        started = time.monotonic()
        done = subprocess.run(
            command, cwd=ROOT, env=dict(env), stdin=source, check=True, capture_output=True
        )
        seconds = time.monotonic() - started
    return {
        "lines": lines,
        "batch_size": BULK_BATCH,
        "output": done.stdout.decode().strip(),
        "seconds": seconds,
        "startup_seconds": startup,
        "events_per_second": lines / seconds,
        "events_per_second_after_startup": lines / (seconds - startup),
    }


def run(
    count: int = 5000,
    bulk_lines: int = 100_000,
    database_url: str = DEFAULT_DATABASE_URL,
    redis_url: str = DEFAULT_REDIS_URL,
    redis_prefix: str = DEFAULT_REDIS_PREFIX,
) -> dict[str, Any]:
    """Publishes/s from one process and from four (``count`` publishes per process) with the
    ordering checked, then ``send_event --stdin`` with ``bulk_lines`` lines."""
    env = bench_env(database_url, redis_url, redis_prefix)
    migrate(env)
    with django_worker(env) as worker:
        worker.submit(reset_events).result()
    phases = []
    handle = start_server("daphne", APP, env, core=SERVER_CORE)
    try:
        with pinned_here(CLIENT_CORE):
            for processes in (1, 4):
                with django_worker(env) as worker:
                    start = worker.submit(newest_id).result()
                phase = asyncio.run(checked_phase(handle.port, env, processes, count, start))
                with django_worker(env) as worker:
                    stored = worker.submit(stored_ids, start).result()
                phases.append(verify(phase, stored))
    finally:
        handle.stop()
    with django_worker(env) as worker:
        start = worker.submit(newest_id).result()
        bulk_result = bulk(env, bulk_lines, start)
        stored = worker.submit(stored_ids, start).result()
    bulk_result["stored"] = len(stored)
    bulk_result["ids_consecutive"] = stored == list(range(start + 1, start + 1 + bulk_lines))
    single = phases[0]["publishes_per_second"]
    return {
        "scenario": "publish",
        "database": "postgresql",
        "channel": CHANNEL,
        "count_per_process": count,
        "phases": phases,
        "bulk": bulk_result,
        "target_publishes_per_second": TARGET_PER_SECOND,
        "target_met": single >= TARGET_PER_SECOND
        and all(phase["ordering_intact"] for phase in phases),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="publishes per process")
    parser.add_argument("--bulk", type=int, default=20_000, help="lines for send_event --stdin")
    add_service_arguments(parser)
    args = parser.parse_args()
    result = run(args.count, args.bulk, args.database_url, args.redis_url, args.redis_prefix)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
