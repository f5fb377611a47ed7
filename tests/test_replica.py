"""A project with a read replica: every read that decides what a stream delivers goes to the
database the events are written to (``router.db_for_write``), never to a replica that lags
behind it. An id committed on the primary but not yet on the replica would otherwise be taken
for a rolled-back one and skipped, by a resuming client's replay or by the hub's gap read for
every live stream of the process.

The real thing, whatever ``DATABASE_URL`` says: a private PostgreSQL primary and a streaming
standby of it (``pg_basebackup -R``) that applies each commit ``REPLICA_DELAY`` late
(``recovery_min_apply_delay``); a daphne whose ``DATABASES`` holds both, with a router that
sends every read to the standby (tests/routers.py, as Django's documentation sets one up);
the session's Redis; real SSE clients. Events are published through the HTTP publish API, so
they are written where the router writes them and their notices go out on Redis.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import httpx
import psycopg
import pytest
from httpx_sse import ServerSentEvent

from tests.conftest import ROOT, Server, SSEClient, StartServer, free_port, server_env
from tests.postgres import PrivateCluster, missing_binaries, private_cluster

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        bool(missing_binaries()),
        reason=f"PostgreSQL 15's programs are missing: {missing_binaries()}",
    ),
]

# Far longer than anything the server does between a publish and its read of it, so that
# every read below that reaches the replica misses what was just published.
REPLICA_DELAY = 2.0
DATABASE = "notify"
TOKEN = "replica-tests-publish-token-0123456789"
CHANNEL = "replicated"


def conninfo(cluster: PrivateCluster) -> str:
    return cluster.url(DATABASE).replace("postgres://", "postgresql://", 1)


@pytest.fixture(scope="module")
def primary() -> Iterator[PrivateCluster]:
    """A private primary with notify's tables, migrated as a project's would be."""
    with private_cluster() as cluster:
        with psycopg.connect(cluster.url().replace("postgres://", "postgresql://", 1)) as admin:
            admin.autocommit = True
            admin.execute(f"CREATE DATABASE {DATABASE}")
        env = {**server_env(None), "DATABASE_URL": cluster.url(DATABASE)}
        env["NOTIFY_TEST_DB_NAME"] = DATABASE
        migrated = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "migrate", "--noinput"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        yield cluster


@pytest.fixture(scope="module")
def replica(primary: PrivateCluster) -> Iterator[PrivateCluster]:
    """A hot standby of ``primary`` (copied after the migration), applying commits late."""
    with primary.standby(recovery_min_apply_delay=f"{REPLICA_DELAY * 1000:.0f}ms") as cluster:
        yield cluster


def replicated_server(
    start_server: StartServer, primary: PrivateCluster, replica_url: str
) -> Server:
    return start_server(
        PUBLISH_TOKENS=[TOKEN],
        env={
            "DATABASE_URL": primary.url(DATABASE),
            "NOTIFY_TEST_DB_NAME": DATABASE,
            "NOTIFY_TEST_REPLICA_URL": replica_url,
        },
    )


class Setup(NamedTuple):
    server: Server
    primary: PrivateCluster
    replica: PrivateCluster


@pytest.fixture
def setup(start_server: StartServer, primary: PrivateCluster, replica: PrivateCluster) -> Setup:
    """A daphne on both, whose hub has started (at the newest id, which the replica has):
    each test then decides alone what the replica lags behind on."""
    server = replicated_server(start_server, primary, replica.url(DATABASE))
    newest = publish(server, "warm-up")
    wait_replicated(replica, newest)
    with SSEClient(stream_url(server)) as client:
        assert client.next().event == "notify.open"
    return Setup(server, primary, replica)


def stream_url(server: Server) -> str:
    return f"{server.url}/notify/stream/?channel={CHANNEL}"


def publish(server: Server, data: Any) -> int:
    """Publish through the HTTP API: stored on the primary, its notice sent on Redis."""
    response = httpx.post(
        f"{server.url}/notify/publish/",
        json={"channel": CHANNEL, "data": data},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def store_without_notice(primary: PrivateCluster) -> int:
    """A row committed on the primary whose notice never reached Redis (its publisher could
    not reach it): the hub learns of it only from the database."""
    with psycopg.connect(conninfo(primary), autocommit=True) as connection:
        row = connection.execute(
            "INSERT INTO notify_event (channel, event, data, created) "
            "VALUES (%s, 'message', '\"no notice\"', now()) RETURNING id",
            [CHANNEL],
        ).fetchone()
    assert row is not None
    return row[0]


def replicated(replica: PrivateCluster, event_id: int) -> bool:
    with psycopg.connect(conninfo(replica), autocommit=True) as connection:
        row = connection.execute("SELECT MAX(id) FROM notify_event").fetchone()
    return row is not None and row[0] is not None and row[0] >= event_id


def wait_replicated(replica: PrivateCluster, event_id: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not replicated(replica, event_id):
        assert time.monotonic() < deadline, f"the replica never got id {event_id}"
        time.sleep(0.1)


def event_ids(events: list[ServerSentEvent]) -> list[int]:
    return [int(event.id) for event in events if event.event == "message"]


def until_id(event_id: int) -> Callable[[ServerSentEvent], bool]:
    return lambda event: event.id == str(event_id)


def lagging(event_id: int) -> str:
    """Why a test that read while the replica was meant to lag proves nothing."""
    return (
        f"the replica already had id {event_id}: it was read after it caught up, so this "
        "run tested nothing (a machine too loaded for REPLICA_DELAY?)"
    )


def test_a_resuming_client_replays_what_the_replica_does_not_have_yet(setup: Setup):
    server, _, replica = setup
    # The case, where a client that had 2 resumed while 3 was on both databases and
    # 4 on the primary only: it got [3, 5], and 4 never came.
    _, second, third = [publish(server, n) for n in range(3)]
    wait_replicated(replica, third)
    missed = publish(server, "on the primary only")
    with SSEClient(stream_url(server), last_event_id=str(second)) as client:
        replay = client.until(lambda event: event.event == "notify.catchup-end")
        assert not replicated(replica, missed), lagging(missed)
        live = publish(server, "live")
        rest = client.until(until_id(live))
    assert event_ids(replay + rest) == [third, missed, live]


def test_live_streams_get_an_event_the_hub_reads_from_the_database(setup: Setup):
    server, primary, replica = setup
    with SSEClient(stream_url(server)) as client:
        assert client.next().event == "notify.open"
        # The notice of ``noticed`` reaches the hub before any of ``unnoticed``: after
        # GAP_WAIT_SECONDS the hub reads the gap from the database, for every live stream.
        unnoticed = store_without_notice(primary)
        noticed = publish(server, "noticed")
        assert not replicated(replica, unnoticed), lagging(unnoticed)
        # Long after that read, the next event.
        wait_replicated(replica, noticed)
        last = publish(server, "last")
        got = client.until(until_id(last))
    assert event_ids(got) == [unnoticed, noticed, last]


def test_the_history_page_is_read_where_events_are_written(setup: Setup):
    server, _, replica = setup
    newest = publish(server, "just published")
    page = httpx.get(f"{server.url}/notify/history/?channel={CHANNEL}", timeout=10).json()
    assert not replicated(replica, newest), lagging(newest)
    # Its high-water mark, and the page, include what was just published.
    assert page["newest"] == newest
    assert page["events"][0]["id"] == newest


def test_nothing_is_read_from_a_replica_that_is_down(
    start_server: StartServer, primary: PrivateCluster
):
    """Nothing notify reads goes to the replica: with it unreachable, streams replay, the
    history API answers and the health check (the database streams read) is ok."""
    server = replicated_server(
        start_server, primary, f"postgres://postgres@127.0.0.1:{free_port()}/{DATABASE}"
    )
    first = publish(server, "first")
    second = publish(server, "second")
    with SSEClient(stream_url(server), last_event_id=str(first)) as client:
        replay = client.until(lambda event: event.event == "notify.catchup-end")
    assert event_ids(replay) == [second]
    history = httpx.get(f"{server.url}/notify/history/?channel={CHANNEL}", timeout=10)
    assert history.status_code == 200 and history.json()["newest"] == second
    health = httpx.get(f"{server.url}/notify/health/", timeout=10)
    assert health.status_code == 200, health.text
    assert health.json()["database"] == "ok"
