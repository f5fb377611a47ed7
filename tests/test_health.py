"""GET /notify/health/: the database and the broker, answered "ok" or "down: <reason>" within
notify.health.TIMEOUT_SECONDS, with the streams open in the process."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from django.db import connection
from django.test import Client, override_settings
from django.urls import reverse

from notify.health import TIMEOUT_SECONDS
from tests.conftest import SSEClient, free_port, server_env
from tests.processes import Server


class SilentListener:
    """A TCP port that accepts connections and never answers: a host that hangs."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.accepted.append(self.socket.accept()[0])
            except OSError:  # closed
                return

    def close(self) -> None:
        # close() alone does not wake a thread blocked in accept() on Linux; shutdown does.
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_RDWR)
        self.socket.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent() -> Iterator[SilentListener]:
    listener = SilentListener()
    try:
        yield listener
    finally:
        listener.close()


def get_health(client: Client | None = None) -> tuple[int, dict[str, object], str]:
    response = (client or Client()).get(reverse("notify:health"))
    assert response["Content-Type"] == "application/json"
    return response.status_code, response.json(), response["Cache-Control"]


def with_notify(settings, **changes):
    return override_settings(NOTIFY={**settings.NOTIFY, **changes})


@pytest.mark.django_db
def test_healthy_with_the_database_and_redis():
    status, body, cache_control = get_health()
    assert (status, body) == (200, {"database": "ok", "broker": "ok", "streams": 0})
    assert cache_control == "no-store"


@pytest.mark.django_db
def test_healthy_with_the_embedded_broker(settings):
    with with_notify(settings, REDIS_URL=None):
        status, body, _ = get_health()
    assert (status, body) == (200, {"database": "ok", "broker": "ok", "streams": 0})


@pytest.mark.django_db
def test_503_names_the_broker_when_redis_is_down(settings):
    port = free_port()  # nothing listens there
    with with_notify(settings, REDIS_URL=f"redis://127.0.0.1:{port}/0"):
        response = Client().get(reverse("notify:health"))
    assert response.status_code == 503
    assert response.json() == {"database": "ok", "broker": "down: ConnectionError", "streams": 0}
    assert response["Cache-Control"] == "no-store"
    # Open to anyone: where Redis is stays in the log.
    assert str(port) not in response.content.decode()


@pytest.mark.django_db
def test_a_broker_that_does_not_answer_is_down_after_the_timeout(settings, silent):
    with with_notify(settings, REDIS_URL=f"redis://127.0.0.1:{silent.port}/0"):
        started = time.monotonic()
        status, body, _ = get_health()
        took = time.monotonic() - started
    assert status == 503
    assert body == {
        "database": "ok",
        "broker": f"down: no answer within {TIMEOUT_SECONDS:g} s",
        "streams": 0,
    }
    assert TIMEOUT_SECONDS <= took < TIMEOUT_SECONDS + 2
    assert len(silent.accepted) == 1  # it did ask


@pytest.mark.django_db
def test_other_methods_are_not_allowed():
    response = Client().post(reverse("notify:health"))
    assert response.status_code == 405


def test_a_server_counts_its_open_streams(server):
    url = f"{server.url}/notify/health/"
    assert httpx.get(url).json() == {"database": "ok", "broker": "ok", "streams": 0}
    with (
        SSEClient(f"{server.url}/notify/stream/?channel=a") as first,
        SSEClient(f"{server.url}/notify/stream/?channel=a&channel=b") as second,
    ):
        assert first.next().event == second.next().event == "notify.open"
        response = httpx.get(url)
        assert response.status_code == 200
        assert response.json() == {"database": "ok", "broker": "ok", "streams": 2}
    deadline = time.monotonic() + 5
    while (streams := httpx.get(url).json()["streams"]) != 0:
        assert time.monotonic() < deadline, streams
        time.sleep(0.05)


def start_server_on_database(redis_url: str, **database: str) -> Server:
    """A daphne whose database settings are changed by ``database`` (environment variables
    read by tests/settings.py)."""
    return Server({**server_env(redis_url), **database})


@pytest.mark.django_db(transaction=True)
def test_503_names_the_database_when_it_cannot_be_opened(redis_url):
    if connection.vendor == "sqlite":
        missing = "/nonexistent-notify-directory/notify.sqlite3"
    else:
        missing = "notify_no_such_database"
    server = start_server_on_database(redis_url, NOTIFY_TEST_DB_NAME=missing)
    try:
        response = httpx.get(f"{server.url}/notify/health/", timeout=10)
    finally:
        server.stop()
    assert response.status_code == 503
    assert response.json() == {
        "database": "down: OperationalError",
        "broker": "ok",
        "streams": 0,
    }
    assert response.headers["Cache-Control"] == "no-store"
    assert "nonexistent" not in response.text and "no_such" not in response.text


@pytest.mark.django_db(transaction=True)
def test_a_database_that_does_not_answer_is_down_and_asked_once_at_a_time(redis_url, silent):
    pytest.importorskip("psycopg")
    # PostgreSQL on a host that accepts the connection and never answers: psycopg waits for
    # ever (no connect_timeout), and only the health check's own timeout ends the wait.
    server = start_server_on_database(
        redis_url,
        DATABASE_URL=f"postgres://notify@127.0.0.1:{silent.port}/notify",
        NOTIFY_TEST_DB_NAME="",
    )
    try:
        answers = []
        for _ in range(3):
            started = time.monotonic()
            response = httpx.get(f"{server.url}/notify/health/", timeout=10)
            answers.append((response.status_code, response.json(), time.monotonic() - started))
    finally:
        silent.close()  # the stuck query ends, and the server with it
        server.stop()
    for status, body, took in answers:
        assert status == 503
        assert body == {
            "database": f"down: no answer within {TIMEOUT_SECONDS:g} s",
            "broker": "ok",
            "streams": 0,
        }
        assert TIMEOUT_SECONDS <= took < TIMEOUT_SECONDS + 2
    # The later checks waited for the first query instead of each opening a connection.
    assert len(silent.accepted) == 1
