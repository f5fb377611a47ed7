"""Redis pub/sub throughput for notify's pattern (issue 8, docs/scaling.md).

    .bench-venv/bin/python -m bench.pubsub [--subscribers 1 4 16] [--seconds 3]

notify publishes each event as one PUBLISH of a notice (``notify.broker.encode_notice``: a
header line and the event's SSE frame; here the notice of the bench payload, about 365
bytes) on ONE channel, ``<prefix>:events``, and every server process holds ONE subscription
to it. So Redis sends each notice once per server process: its fan-out cost is
events/s x processes. This scenario measures that cost, with no Django and no database:

- a private redis-server (the command line of ``tests.processes.RedisServer``) pinned to
  core 0, so that no other user of a shared Redis disturbs the figure and its CPU time is
  its own (``/proc/<pid>/stat``); ``--redis-url`` measures another server instead, its CPU
  too when it runs on this machine (``INFO server``'s ``process_id``);
- ``--publishers`` processes (default 2) sending one PUBLISH per round trip with redis-py,
  as ``notify.publish`` does, and S subscriber connections (``--subscribers``, default 1, 4
  and 16: each stands for one server process) read with redis-py asyncio and
  ``get_message``, as ``notify.broker.redis`` does, spread over ``--readers`` processes
  (default 2). The clients cost far more CPU per notice than Redis does, so by default they
  run on either core (``--pin-clients``: core 1 only), to load Redis as much as two cores
  allow; Redis's CPU time is its own either way;
- closed loop: a publisher waits while the slowest subscriber is more than ``WINDOW``
  notices behind, so Redis's output buffers stay small and no subscriber is cut off for
  being slow; the rates are what the whole loop sustains.

For each S: notices published per second, notices delivered per second to each subscriber,
and Redis's CPU per notice published and per delivery (one notice to one subscriber). On
this machine the Python clients, not Redis, set the pace, so Redis is part idle; the Redis
ceiling given (notices/s at one full core = 1 s / Redis CPU per notice) is that figure
extrapolated, and conservative: a busier Redis writes several notices per system call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis

from bench.common import (
    DEFAULT_REDIS_PREFIX,
    bench_payload,
    cpu_seconds,
    free_port,
    pinned,
    stop_process,
    wait_for_port,
)
from bench.replay import pinned_here
from notify.broker.base import encode_notice
from notify.sse import stored_event_frame
from tests.processes import redis_server_binary

CHANNEL = f"{DEFAULT_REDIS_PREFIX}:events"  # the channel name notify uses for its notices
REDIS_CORE = 0
CLIENT_CORE = 1
SUBSCRIBERS = (1, 4, 16)
# Notices the slowest subscriber may lag behind the publishers (about 0.7 MB of them).
WINDOW = 2000
# Before each measurement: the loop reaches its pace.
WARMUP_SECONDS = 0.5
# After publishing stops: the subscribers read what is still on its way.
DRAIN_SECONDS = 5.0


def notice(event_id: int = 1_000_000) -> bytes:
    """The notice ``notify.publish`` sends for event ``event_id`` carrying the bench payload."""
    payload = json.dumps(bench_payload(event_id), separators=(",", ":"))
    frame = stored_event_frame(event_id, "public:bench", "message", datetime.now(UTC), payload)
    return encode_notice(event_id, "public:bench", frame)


# -- the private Redis --------------------------------------------------------------------------


@contextmanager
def private_redis(core: int | None = REDIS_CORE) -> Iterator[tuple[str, int]]:
    """A redis-server of its own (no persistence, as ``tests.processes.RedisServer``) pinned to
    ``core``, stopped on leaving; yields its URL and process id."""
    port = free_port()
    directory = tempfile.mkdtemp(prefix="notify-bench-redis-")
    command = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1"]
    command += ["--save", "", "--appendonly", "no", "--dir", directory]
    process = subprocess.Popen(
        pinned(command, core), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port, process=process)
        yield f"redis://127.0.0.1:{port}/0", process.pid
    finally:
        stop_process(process)
        shutil.rmtree(directory, ignore_errors=True)


def local_redis_pid(url: str) -> int | None:
    """The process id of the Redis at ``url`` when it runs on this machine (its ``INFO``
    ``process_id`` names a local redis-server), else None: its CPU cannot be read."""
    client = redis.Redis.from_url(url)
    try:
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    if urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    try:
        command = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    return pid if command.startswith("redis-server") else None


# -- in the publisher and reader processes ------------------------------------------------------


def _publisher(
    url: str,
    index: int,
    published: Any,
    delivered: Any,
    window: int,
    go: Any,
    publishing: Any,
) -> None:
    """PUBLISH the notice, one round trip each, while the slowest subscriber keeps up."""
    message = notice()
    client = redis.Redis.from_url(url)
    client.ping()  # connecting is not publishing
    go.wait()
    sent = 0
    while publishing.value:
        if sum(published) - min(delivered) >= window:
            time.sleep(0.0002)
            continue
        client.publish(CHANNEL, message)
        sent += 1
        published[index] = sent
    client.close()


async def _count(pubsub: aioredis.client.PubSub, slot: int, delivered: Any, reading: Any) -> None:
    while reading.value:
        message = await pubsub.get_message(timeout=0.2)
        if message is not None and message["type"] == "message":
            delivered[slot] += 1


async def _read_all(url: str, slots: list[int], delivered: Any, reading: Any) -> None:
    clients = [aioredis.Redis.from_url(url) for _ in slots]
    pubsubs = [client.pubsub(ignore_subscribe_messages=True) for client in clients]
    for pubsub in pubsubs:
        await pubsub.subscribe(CHANNEL)
    await asyncio.gather(
        *(
            _count(pubsub, slot, delivered, reading)
            for slot, pubsub in zip(slots, pubsubs, strict=True)
        )
    )
    for pubsub, client in zip(pubsubs, clients, strict=True):
        await pubsub.aclose()
        await client.aclose()


def _reader(url: str, slots: list[int], delivered: Any, reading: Any) -> None:
    """One process holding the subscriber connections ``slots``, each counting what it
    receives in its slot of ``delivered``."""
    asyncio.run(_read_all(url, slots, delivered, reading))


# -- in this process ----------------------------------------------------------------------------


def _wait_subscribed(url: str, subscribers: int, timeout: float = 30.0) -> None:
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + timeout
        while dict(client.pubsub_numsub(CHANNEL)).get(CHANNEL.encode(), 0) < subscribers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{subscribers} subscribers did not subscribe in {timeout} s")
            time.sleep(0.05)
    finally:
        client.close()


def measure(
    url: str,
    redis_pid: int | None,
    subscribers: int,
    publishers: int,
    readers: int,
    seconds: float,
    window: int = WINDOW,
) -> dict[str, Any]:
    """One measurement: ``publishers`` publishing to ``subscribers`` connections, spread over
    ``readers`` processes, for ``seconds``."""
    context = multiprocessing.get_context("spawn")
    delivered = context.Array("q", subscribers, lock=False)
    published = context.Array("q", publishers, lock=False)
    reading = context.Value("b", 1, lock=False)
    publishing = context.Value("b", 1, lock=False)
    go = context.Event()
    readers = min(readers, subscribers)
    reader_processes = [
        context.Process(
            target=_reader,
            args=(url, list(range(i, subscribers, readers)), delivered, reading),
        )
        for i in range(readers)
    ]
    senders = [
        context.Process(
            target=_publisher, args=(url, i, published, delivered, window, go, publishing)
        )
        for i in range(publishers)
    ]
    processes = [*reader_processes, *senders]
    for process in processes:
        process.start()
    try:
        _wait_subscribed(url, subscribers)
        go.set()
        time.sleep(WARMUP_SECONDS)

        def snapshot() -> tuple[float, int, list[int], float, float, float]:
            return (
                time.monotonic(),
                sum(published),
                list(delivered),
                cpu_seconds(redis_pid) if redis_pid is not None else 0.0,
                sum(cpu_seconds(p.pid) for p in senders if p.pid is not None),
                sum(cpu_seconds(p.pid) for p in reader_processes if p.pid is not None),
            )

        began = snapshot()
        time.sleep(seconds)
        ended = snapshot()
        publishing.value = 0
        for sender in senders:
            sender.join(10)
        total = sum(published)
        deadline = time.monotonic() + DRAIN_SECONDS
        while min(delivered) < total and time.monotonic() < deadline:
            time.sleep(0.05)
        all_delivered = all(count == total for count in delivered)
    finally:
        publishing.value = 0
        reading.value = 0
        go.set()
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
    took = ended[0] - began[0]
    notices = ended[1] - began[1]
    per_subscriber = [(b - a) / took for a, b in zip(began[2], ended[2], strict=True)]
    deliveries = sum(b - a for a, b in zip(began[2], ended[2], strict=True))
    result: dict[str, Any] = {
        "subscribers": subscribers,
        "publishers": publishers,
        "reader_processes": readers,
        "seconds": round(took, 2),
        "published": notices,
        "published_per_second": notices / took,
        "delivered_per_second_per_subscriber": per_subscriber,
        "delivered_per_second_slowest": min(per_subscriber),
        "deliveries_per_second": deliveries / took,
        "publisher_cpu_us_per_publish": (ended[4] - began[4]) / notices * 1e6,
        "reader_cpu_us_per_delivery": (ended[5] - began[5]) / deliveries * 1e6,
        "all_delivered": all_delivered,
    }
    if redis_pid is not None:
        redis_cpu = ended[3] - began[3]
        result.update(
            redis_cpu_seconds=round(redis_cpu, 2),
            redis_busy=redis_cpu / took,
            redis_cpu_us_per_publish=redis_cpu / notices * 1e6,
            redis_cpu_us_per_delivery=redis_cpu / deliveries * 1e6,
            # One core's worth of Redis CPU at the measured cost per notice.
            redis_ceiling_publishes_per_second=notices / redis_cpu if redis_cpu else None,
        )
    return result


def run(
    subscribers: Sequence[int] = SUBSCRIBERS,
    seconds: float = 3.0,
    publishers: int = 2,
    readers: int = 2,
    client_core: int | None = None,
    redis_url: str | None = None,
) -> dict[str, Any]:
    """Pub/sub throughput for each count of subscribers, on a private Redis (or the one at
    ``redis_url``), with Redis's CPU per notice when it runs on this machine. The clients run
    on ``client_core`` (None: anywhere)."""
    pinning = nullcontext() if client_core is None else pinned_here(client_core)
    with pinning, _redis(redis_url) as (url, pid):
        client = redis.Redis.from_url(url)
        try:
            version = client.info("server")["redis_version"]
        finally:
            client.close()
        runs = [measure(url, pid, s, publishers, readers, seconds) for s in subscribers]
    return {
        "scenario": "pubsub",
        "redis": {
            "version": version,
            "private": redis_url is None,
            "cpu_measured": pid is not None,
        },
        "channel": CHANNEL,
        "notice_bytes": len(notice()),
        "window": WINDOW,
        "cores": {"redis": REDIS_CORE if redis_url is None else None, "clients": client_core},
        "runs": runs,
    }


@contextmanager
def _redis(url: str | None) -> Iterator[tuple[str, int | None]]:
    if url is None:
        with private_redis() as (private_url, pid):
            yield private_url, pid
    else:
        yield url, local_redis_pid(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--subscribers", type=int, nargs="+", default=list(SUBSCRIBERS), help="S, one run each"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each measurement")
    parser.add_argument("--publishers", type=int, default=2, help="publishing processes")
    parser.add_argument(
        "--readers", type=int, default=2, help="processes the subscriber connections share"
    )
    parser.add_argument("--pin-clients", action="store_true", help="run the clients on core 1 only")
    parser.add_argument(
        "--redis-url", default=None, help="measure this Redis instead of a private one"
    )
    args = parser.parse_args()
    client_core = CLIENT_CORE if args.pin_clients else None
    result = run(
        args.subscribers,
        args.seconds,
        args.publishers,
        args.readers,
        client_core,
        args.redis_url,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
