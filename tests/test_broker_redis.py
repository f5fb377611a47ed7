"""notify.broker.redis against sockets that fail the way an unreachable Redis does."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from notify.broker.redis import _SKIP_AFTER_FAILURE, RedisBroker
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


def test_revocations_are_always_tried(refusing):
    broker = RedisBroker(f"redis://127.0.0.1:{refusing.port}/0", prefix=REDIS_PREFIX)
    broker.publish(b"1")
    attempts = refusing.accepted
    broker.revoke("7")
    assert refusing.accepted > attempts


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
