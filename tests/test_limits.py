"""notify.limits: streams end after MAX_STREAM_SECONDS and their clients resume without loss;
MAX_STREAMS_PER_IP / MAX_STREAMS_PER_USER refuse streams beyond them, over every process."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest
import redis
from django.contrib.auth.models import User
from django.db import connection

import notify
from notify import limits
from tests.conftest import Server, SSEClient, StartServer
from tests.policies import POLICY
from tests.test_asgi import stream_url
from tests.test_stream_authorization import session_cookie

CHANNEL = "public:limits"


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
