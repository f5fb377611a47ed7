"""notify.broker.redis against sockets that fail the way an unreachable Redis does, and the
reports each process keeps in a real Redis."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from notify.broker.redis import _PUBLISH_TIMEOUT, _SKIP_AFTER_FAILURE, RedisBroker
from tests.conftest import REDIS_PREFIX, Listener


class RefusingRedis:
    """A TCP port that accepts connections and closes them at once, counting them: what a
    client sees of a Redis that is going away."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                connection, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            connection.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


@pytest.fixture
def refusing() -> Iterator[RefusingRedis]:
    server = RefusingRedis()
    yield server
    server.close()


def test_after_a_failed_publish_redis_is_left_alone_for_a_moment(refusing):
    broker = RedisBroker(f"redis://127.0.0.1:{refusing.port}/0", prefix=REDIS_PREFIX)
    broker.publish(b"1")
    attempts = refusing.accepted
    assert attempts >= 1
    # While Redis is down, publishing does not pay for connection attempts and retries on
    # every event: the next ones skip Redis (their events are read from the database).
    for n in range(20):
        broker.publish_many([str(n).encode()])
    assert refusing.accepted == attempts
    time.sleep(_SKIP_AFTER_FAILURE + 0.1)
    broker.publish(b"2")
    assert refusing.accepted > attempts


def test_publishing_to_a_silent_redis_costs_a_moment_once(private_redis):
    """A Redis that accepts connections but answers nothing (here: stopped with SIGSTOP)
    holds the publisher's request for one timeout, not one per retry, and the next
    publishes skip it."""
    broker = RedisBroker(private_redis.url, prefix=REDIS_PREFIX)
    broker.publish(b"warm")  # connected
    private_redis.pause()
    try:
        start = time.monotonic()
        broker.publish(b"lost")  # logged; its event would be read from the database
        took = time.monotonic() - start
        assert took < 2 * _PUBLISH_TIMEOUT, took
        start = time.monotonic()
        broker.publish(b"skipped")
        assert time.monotonic() - start < 0.1
    finally:
        private_redis.resume()


def test_publishing_resumes_once_redis_is_back(private_redis):
    broker = RedisBroker(private_redis.url, prefix=REDIS_PREFIX)
    private_redis.stop()
    broker.publish(b"lost")  # logged; its event would be read from the database
    private_redis.start()
    listener = Listener(private_redis.url)
    try:
        time.sleep(_SKIP_AFTER_FAILURE)
        broker.publish(b"sent")
        assert listener.next() == b"sent"
    finally:
        listener.close()


# -- the reports of every process, found through a registry -----------------------------------


def write_owners(
    broker: RedisBroker, key: str, counts: dict[str, int], ttl: float = 10.0, **options: Any
) -> dict[str, int] | None:
    options = {"seq": 1, "replace": True, "others_of": [], **options}
    return asyncio.run(broker.write_stream_owners(key, counts, ttl, **options))


def test_stream_counts_of_every_other_process_and_a_dead_ones_drop_out(private_redis):
    broker = RedisBroker(private_redis.url, prefix=REDIS_PREFIX)
    write_owners(broker, "dies", {"ip:a": 2, "user:1": 1}, ttl=0.3)
    write_owners(broker, "lives", {"ip:a": 1})
    assert write_owners(broker, "asks", {"ip:a": 1}, others_of=["ip:a", "user:1", "ip:b"]) == {
        "ip:a": 3,
        "user:1": 1,
        "ip:b": 0,
    }
    time.sleep(0.4)  # "dies" stopped reporting three intervals ago
    assert write_owners(broker, "asks", {}, seq=2, replace=False, others_of=["ip:a"]) == {"ip:a": 1}
    client = redis.Redis.from_url(private_redis.url)
    assert client.smembers(broker.owners_registry) == {
        f"{broker.owners_prefix}{key}".encode() for key in ("lives", "asks")
    }
    assert client.ttl(broker.owners_registry) > 0


def test_a_write_that_arrives_after_a_newer_one_is_ignored(private_redis):
    """Writes carry absolute counts; one that timed out may reach Redis after the next."""
    broker = RedisBroker(private_redis.url, prefix=REDIS_PREFIX)
    write_owners(broker, "p", {"ip:a": 3, "ip:b": 1}, seq=5)
    write_owners(broker, "p", {"ip:a": 1}, seq=4)
    write_owners(broker, "p", {"ip:b": 0}, seq=6, replace=False)
    assert write_owners(broker, "q", {}, others_of=["ip:a", "ip:b"]) == {"ip:a": 3, "ip:b": 0}


def test_presence_reports_are_found_through_their_registry(private_redis):
    broker = RedisBroker(private_redis.url, prefix=REDIS_PREFIX)
    client = redis.Redis.from_url(private_redis.url)
    client.hset(f"{broker.presence_prefix}stray", mapping={"news": 5})  # in no registry

    async def report(key: str, counts: dict[str, int], ttl: float = 10.0) -> None:
        await broker.report_presence(key, counts, ttl)

    asyncio.run(report("a", {"news": 2, "sport": 1}))
    asyncio.run(report("b", {"news": 1}))
    asyncio.run(report("dies", {"news": 4}, ttl=0.2))
    time.sleep(0.3)
    assert broker.stream_counts(["news", "sport", "other"]) == {"news": 3, "sport": 1, "other": 0}
    asyncio.run(report("b", {}))  # no streams left: the report goes
    assert broker.stream_counts(["news"]) == {"news": 2}
    assert client.smembers(broker.presence_registry) == {f"{broker.presence_prefix}a".encode()}
