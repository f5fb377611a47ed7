"""notify.limits: streams end after MAX_STREAM_SECONDS and their clients resume without loss;
MAX_STREAMS_PER_IP / MAX_STREAMS_PER_USER refuse streams beyond them, over every process."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
import pytest
import redis
from django.contrib.auth.models import User
from django.db import connection
from django.test import override_settings

import notify
from notify import limits
from notify.audience import stream_counts
from notify.limits import StreamCounter
from tests.conftest import RedisServer, Server, SSEClient, StartServer
from tests.policies import POLICY
from tests.test_asgi import stream_url
from tests.test_stream_authorization import session_cookie
from tests.ws_client import Closed, WSClient, ws_url

CHANNEL = "public:limits"

T = TypeVar("T")


def own_prefix() -> str:
    """A Redis prefix of the test's own: counts of servers stopped by earlier tests last
    until their reports expire."""
    return f"notify-limits-{uuid.uuid4().hex[:8]}"


def refused(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    response = httpx.get(url, headers=headers, timeout=10)
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == str(limits.RETRY_AFTER)
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    return response


def admitted_soon(url: str, timeout: float = 5.0) -> SSEClient:
    """A stream of ``url``, once the server has noticed a closed one (it counts it off when
    it sees the disconnect)."""
    deadline = time.monotonic() + timeout
    while True:
        client = SSEClient(url)
        if client.response.status_code == 200:
            return client
        client.close()
        assert time.monotonic() < deadline, "the closed stream was never counted off"
        time.sleep(0.1)


def open_streams(url: str, count: int, headers: dict[str, str] | None = None) -> list[SSEClient]:
    clients = []
    for _ in range(count):
        client = SSEClient(url, headers=headers)
        assert client.response.status_code == 200
        assert client.next().event == "notify.open"
        clients.append(client)
    return clients


# -- MAX_STREAM_SECONDS -----------------------------------------------------------------------


def test_lifetime_is_jittered_around_the_setting(settings):
    settings.NOTIFY = {**settings.NOTIFY, "MAX_STREAM_SECONDS": 100}
    lifetimes = [limits.stream_lifetime() for _ in range(200)]
    assert all(lifetime is not None and 90 <= lifetime <= 110 for lifetime in lifetimes)
    assert len(set(lifetimes)) > 100
    settings.NOTIFY = {**settings.NOTIFY, "MAX_STREAM_SECONDS": None}
    assert limits.stream_lifetime() is None


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
def test_streams_end_and_the_client_resumes_without_loss(start_server: StartServer, kind):
    server = start_server(kind=kind, MAX_STREAM_SECONDS=1)
    url = stream_url(server, CHANNEL)
    published: list[int] = []
    stop = threading.Event()

    def publish_continuously() -> None:
        try:
            while not stop.is_set() and len(published) < 200:
                published.append(notify.publish(CHANNEL, {"n": len(published)}, event="tick").id)
                time.sleep(0.03)
        finally:
            connection.close()

    received: list[int] = []
    ends = 0
    client = SSEClient(url)
    assert client.next().event == "notify.open"
    publisher = threading.Thread(target=publish_continuously)
    publisher.start()
    started = time.monotonic()
    try:
        while True:
            try:
                while True:
                    event = client.next()
                    if event.event == "tick":
                        received.append(int(event.id))
            except EOFError:
                ends += 1
                elapsed = time.monotonic() - started
            last_id = client.last_id
            client.close()
            if elapsed > 3.5:
                stop.set()
                publisher.join()
            if stop.is_set() and received[-1:] == published[-1:]:
                break
            assert elapsed < 30, "the client never caught up"
            client = SSEClient(url, last_event_id=last_id)
    finally:
        stop.set()
        publisher.join()
        client.close()
    assert ends >= 3
    assert received == published


# -- MAX_STREAMS_PER_IP / MAX_STREAMS_PER_USER ---------------------------------------------


@pytest.mark.parametrize("broker", ["redis", "embedded"])
def test_per_address_limit(start_server: StartServer, redis_url: str, broker):
    server = start_server(
        redis=redis_url if broker == "redis" else None,
        REDIS_PREFIX=own_prefix(),
        MAX_STREAMS_PER_IP=3,
    )
    url = stream_url(server, CHANNEL)
    clients = open_streams(url, 3)
    try:
        response = refused(url)
        assert response.text == (
            "too many open streams for this address: the limit is 3 "
            '(NOTIFY["MAX_STREAMS_PER_IP"]); close one and retry\n'
        )
        clients.pop().close()
        clients.append(admitted_soon(url))
        assert clients[-1].next().event == "notify.open"
        refused(url)
    finally:
        for client in clients:
            client.close()


def test_per_address_limit_counts_every_process(start_server: StartServer):
    prefix = own_prefix()
    first: Server = start_server(REDIS_PREFIX=prefix, MAX_STREAMS_PER_IP=3)
    second: Server = start_server(REDIS_PREFIX=prefix, MAX_STREAMS_PER_IP=3)
    clients = open_streams(stream_url(first, CHANNEL), 2)
    clients += open_streams(stream_url(second, CHANNEL), 1)
    try:
        refused(stream_url(first, CHANNEL))
        refused(stream_url(second, CHANNEL))
        clients.pop(0).close()
        clients.append(admitted_soon(stream_url(second, CHANNEL)))
        refused(stream_url(first, CHANNEL))
    finally:
        for client in clients:
            client.close()


def test_per_user_limit(start_server: StartServer):
    server = start_server(
        REDIS_PREFIX=own_prefix(),
        AUTHORIZE=POLICY,
        MAX_STREAMS_PER_USER=2,
        MAX_STREAMS_PER_IP=3,
    )
    alice = {"Cookie": session_cookie(User.objects.create_user("alice"))}
    bob = {"Cookie": session_cookie(User.objects.create_user("bob"))}
    url = stream_url(server, CHANNEL)
    clients = open_streams(url, 2, headers=alice)
    try:
        response = refused(url, headers=alice)
        assert "too many open streams for this user: the limit is 2" in response.text
        assert 'NOTIFY["MAX_STREAMS_PER_USER"]' in response.text
        # Another user from the same address, and visitors (counted by address), still may.
        clients += open_streams(url, 2, headers=bob)
        clients += open_streams(url, 3)
        refused(url)
    finally:
        for client in clients:
            client.close()


def test_streams_never_admitted_leave_no_count(start_server: StartServer):
    """A refused stream (403, 429) counts nothing: the count is back to zero after."""
    server = start_server(REDIS_PREFIX=own_prefix(), AUTHORIZE=POLICY, MAX_STREAMS_PER_IP=1)
    url = stream_url(server, CHANNEL)
    for _ in range(3):
        assert httpx.get(stream_url(server, "staff"), timeout=10).status_code == 403
    with SSEClient(url) as client:
        assert client.next().event == "notify.open"
        for _ in range(3):
            refused(url)
    admitted_soon(url).close()


def test_streams_under_no_limit_are_not_counted(start_server: StartServer, redis_url: str):
    """With no limit for its owner a stream counts nothing through the broker (a round trip
    that each process's opens take in turn): opening many at once costs no Redis work."""
    prefix = own_prefix()
    server = start_server(REDIS_PREFIX=prefix, MAX_STREAMS_PER_IP=None)
    client = redis.Redis.from_url(redis_url)
    clients = open_streams(stream_url(server, CHANNEL), 3)
    try:
        assert list(client.scan_iter(match=f"{prefix}:streams:*")) == []
    finally:
        for stream in clients:
            stream.close()
    # The counted case writes there (so the check above can fail).
    counted = start_server(REDIS_PREFIX=prefix, MAX_STREAMS_PER_IP=5)
    with SSEClient(stream_url(counted, CHANNEL)) as stream:
        assert stream.next().event == "notify.open"
        assert list(client.scan_iter(match=f"{prefix}:streams:*")) != []


# -- StreamCounter, with counters of one loop standing for processes on one Redis ---------------


def with_counters(redis_url: str, main: Callable[[], Awaitable[T]], **notify: object) -> T:
    """``main()`` run in an event loop of its own, counting through ``redis_url`` under a
    prefix of its own."""
    settings = {"REDIS_URL": redis_url, "REDIS_PREFIX": own_prefix(), **notify}
    with override_settings(NOTIFY=settings):
        return asyncio.run(main())


def test_opens_carried_by_one_write_are_refused_only_beyond_the_limit(redis_url):
    async def main() -> tuple[list[bool], int]:
        elsewhere, here = StreamCounter(), StreamCounter()
        assert await elsewhere.acquire("ip:x", 3)
        # Counted here together, before the write that carries them all.
        admitted = await asyncio.gather(*(here.acquire("ip:x", 3) for _ in range(4)))
        return admitted, here.counts["ip:x"]

    assert with_counters(redis_url, main) == ([True, True, False, False], 2)


def test_processes_admitting_at_the_same_moment_never_admit_beyond_the_limit(redis_url):
    async def main() -> list[int]:
        counters = [StreamCounter() for _ in range(4)]
        admitted = []
        for _ in range(5):
            results = await asyncio.gather(
                *(counter.acquire("ip:x", 6) for counter in counters for _ in range(5))
            )
            admitted.append(sum(results))
            for counter in counters:
                for _ in range(counter.counts["ip:x"]):
                    counter.release("ip:x")
            await asyncio.sleep(0.05)  # the releases are written
        return admitted

    assert all(1 <= count <= 6 for count in with_counters(redis_url, main))


def test_a_cancelled_acquire_leaves_nothing_counted(private_redis: RedisServer):
    """Cancelled while it waits for Redis: nothing stays counted, here or in Redis."""
    prefix = own_prefix()

    async def main() -> dict[str, int]:
        counter = StreamCounter()
        assert await counter.acquire("ip:x", 5)
        private_redis.pause()
        try:
            opening = asyncio.ensure_future(counter.acquire("ip:x", 5))
            await asyncio.sleep(0.1)
            assert not opening.done()
            opening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await opening
        finally:
            private_redis.resume()
        counts = dict(counter.counts)
        counter.release("ip:x")
        await asyncio.sleep(0.5)  # a write after the release
        return counts

    settings = {"REDIS_URL": private_redis.url, "REDIS_PREFIX": prefix, "PRESENCE_SECONDS": 0.2}
    with override_settings(NOTIFY=settings):
        assert asyncio.run(main()) == {"ip:x": 1}
    eventually(lambda: counted_in_redis(private_redis.url, prefix, "ip:x"), 0)


# -- leaving during admission ----------------------------------------------------------------


def counted_in_redis(url: str, prefix: str, owner: str = "ip:127.0.0.1") -> int:
    """The streams of ``owner`` that the servers of ``prefix`` report in Redis."""
    client = redis.Redis.from_url(url)
    try:
        return sum(
            int(client.hget(name, owner) or 0)
            for name in client.scan_iter(match=f"{prefix}:streams:*", _type="hash")
        )
    finally:
        client.close()


def eventually(read: Callable[[], object], wanted: object, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while (got := read()) != wanted:
        assert time.monotonic() < deadline, f"{got!r} != {wanted!r}"
        time.sleep(0.05)


def abort_handshake(server: Server, after: float, transport: str = "websocket") -> None:
    """Ask for a stream, then leave ``after`` seconds later, whatever the server has answered
    by then: a client that gives up while the stream is being let in."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        head = f"Host: 127.0.0.1:{server.port}\r\n"
        if transport == "websocket":
            key = base64.b64encode(os.urandom(16)).decode()
            path = "/notify/ws/"
            head += (
                f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n"
            )
        else:
            path = "/notify/stream/"
            head += "Accept: text/event-stream\r\n"
        sock.sendall(f"GET {path}?channel={CHANNEL} HTTP/1.1\r\n{head}\r\n".encode())
        time.sleep(after)


def ws_opens(server: Server) -> WSClient:
    """A WebSocket stream that was let in (its ``notify.open`` came)."""
    ws = WSClient(ws_url(server, CHANNEL))
    try:
        assert ws.next()["type"] == "notify.retry"
        assert ws.next()["type"] == "notify.open"
    except (AssertionError, Closed):
        ws.close()
        raise
    return ws


def ws_refused(server: Server) -> None:
    with WSClient(ws_url(server, CHANNEL)) as ws:
        assert ws.ended().code == 4429


def assert_full_and_not_more(server: Server, limit: int) -> None:
    """``limit`` streams open from the address, and no more: nothing else holds a slot."""
    clients = [ws_opens(server) for _ in range(limit)]
    try:
        ws_refused(server)
    finally:
        for ws in clients:
            ws.close()


def test_websocket_clients_that_leave_during_admission_hold_no_slot(start_server, redis_url):
    """Handshakes given up 0-40 ms after they were sent (while the stream is being counted,
    for some of them) leave nothing counted, in the process or in Redis."""
    prefix = own_prefix()
    server = start_server(REDIS_PREFIX=prefix, MAX_STREAMS_PER_IP=2, PRESENCE_SECONDS=0.5)
    for _ in range(40):
        abort_handshake(server, random.uniform(0, 0.04))
    eventually(lambda: counted_in_redis(redis_url, prefix), 0)
    # Two periodic reports later, still nothing (a slot leaked in the process comes back
    # with them).
    time.sleep(1.2)
    assert counted_in_redis(redis_url, prefix) == 0
    assert_full_and_not_more(server, 2)


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_clients_that_leave_while_redis_is_slow_to_count_them_hold_no_slot(
    start_server, private_redis: RedisServer, transport: str
):
    """Deterministic: Redis answers nothing while the clients leave, so each of them leaves
    while its stream waits for Redis (or after the process stopped waiting for it)."""
    prefix = own_prefix()
    server = start_server(
        redis=private_redis.url, REDIS_PREFIX=prefix, MAX_STREAMS_PER_IP=2, PRESENCE_SECONDS=1
    )
    ws_opens(server).close()  # the process's hub and its Redis connections are up
    eventually(lambda: counted_in_redis(private_redis.url, prefix), 0)
    private_redis.pause()
    try:
        for _ in range(4):
            abort_handshake(server, 0.1, transport)
    finally:
        private_redis.resume()
    time.sleep(1)  # what Redis was sent while paused has landed; a report went since
    eventually(lambda: counted_in_redis(private_redis.url, prefix), 0)
    assert_full_and_not_more(server, 2)


# -- a Redis that does not answer ------------------------------------------------------------


def timed(open_stream: Callable[[], object]) -> tuple[object, float]:
    started = time.monotonic()
    result = open_stream()
    return result, time.monotonic() - started


def test_a_silent_redis_holds_an_open_back_a_moment_then_the_process_counts_alone(
    start_server, private_redis: RedisServer
):
    prefix = own_prefix()
    server = start_server(
        redis=private_redis.url, REDIS_PREFIX=prefix, MAX_STREAMS_PER_IP=3, PRESENCE_SECONDS=1
    )
    url = stream_url(server, CHANNEL)
    clients: list[SSEClient | WSClient] = open_streams(url, 1)
    try:
        eventually(lambda: counted_in_redis(private_redis.url, prefix), 1)
        private_redis.pause()
        try:
            # The first open waits for Redis, at most a moment; the next ones do not wait.
            sse, took = timed(lambda: open_streams(url, 1)[0])
            clients.append(sse)  # type: ignore[arg-type]
            assert took < 1.5
            ws, took = timed(lambda: ws_opens(server))
            clients.append(ws)  # type: ignore[arg-type]
            assert took < 1.0
            # Counted by the process on its own meanwhile: the limit still holds.
            _, took = timed(lambda: refused(url))
            assert took < 1.0
            _, took = timed(lambda: ws_refused(server))
            assert took < 1.0
            clients.pop(0).close()  # one ends while Redis is silent
            time.sleep(0.3)
        finally:
            private_redis.resume()
        # Once Redis answers, it is told the process's count again: two streams.
        eventually(lambda: counted_in_redis(private_redis.url, prefix), 2)
        clients.append(admitted_soon(url))
        refused(url)
    finally:
        for client in clients:
            client.close()


# -- a Redis shared with a cache ---------------------------------------------------------------


def test_counting_and_presence_do_not_walk_unrelated_keys(start_server, private_redis: RedisServer):
    """With 200,000 keys of something else in the database (a cache), opening a limited
    stream and reading presence SCAN nothing and cost a few commands each."""
    client = redis.Redis.from_url(private_redis.url)
    for start in range(0, 200_000, 10_000):
        client.mset({f"cache:{n}": b"x" for n in range(start, start + 10_000)})
    prefix = own_prefix()
    server = start_server(
        redis=private_redis.url, REDIS_PREFIX=prefix, MAX_STREAMS_PER_IP=10, PRESENCE_SECONDS=60
    )
    url = stream_url(server, CHANNEL)
    settings = {"REDIS_URL": private_redis.url, "REDIS_PREFIX": prefix}
    clients = open_streams(url, 1)  # the hub, its first presence report, the connections
    try:
        with override_settings(NOTIFY=settings):
            stream_counts([CHANNEL])  # this process's connection
            client.config_resetstat()
            clients += open_streams(url, 3)
            for _ in range(3):
                stream_counts([CHANNEL, "other"])
        stats = client.info("commandstats")
    finally:
        for stream in clients:
            stream.close()
        client.close()
    calls = {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in stats.items()}
    assert "scan" not in calls and "keys" not in calls, calls
    # Three opens and three presence reads, with a Redis PING or two of the subscription's
    # health checks besides: a few dozen commands, however many keys the database holds.
    assert sum(calls.values()) < 80, calls
