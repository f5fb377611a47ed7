"""Delivery across processes: concurrent publishers, several servers, reconnecting clients,
a Redis restart, and the embedded broker. Every client must see every id of its channels
once, in increasing order."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time

from django.test import override_settings

import notify
from notify.models import Event
from tests.conftest import (
    REDIS_PREFIX,
    ROOT,
    RedisServer,
    Server,
    SSEClient,
    manage,
    payload,
    server_env,
)

CHANNELS = ["orders", "alerts", "user:1", "user:2"]


class Reader(threading.Thread):
    """A client that reads some events, drops the connection, and resumes from its cursor on
    one of the servers, until it has seen ``target``."""

    def __init__(self, urls: list[str], channels: list[str], seed: int) -> None:
        super().__init__(daemon=True)
        self.urls = urls
        self.channels = channels
        self.rng = random.Random(seed)
        self.first_cursor: int | None = None
        self.cursor: str | None = None
        self.received: list[int] = []
        self.controls: list[str] = []
        self.reconnects = 0
        self.target: int | None = None
        self.opened = threading.Event()
        self.error: BaseException | None = None

    def done(self) -> bool:
        return (
            self.target is not None and self.cursor is not None and int(self.cursor) >= self.target
        )

    def run(self) -> None:
        query = "&".join(f"channel={c}" for c in self.channels)
        try:
            while not self.done():
                url = f"{self.rng.choice(self.urls)}/notify/stream/?{query}"
                with SSEClient(url, last_event_id=self.cursor) as client:
                    self._read(client, budget=self.rng.randint(1, 60))
                self.reconnects += 1
        except BaseException as exc:  # reported by the test
            self.error = exc
            self.opened.set()

    def _read(self, client: SSEClient, budget: int) -> None:
        while budget > 0 and not self.done():
            event = client.next()
            if event.event == "notify.open":
                self.first_cursor = int(event.id)
                self.opened.set()
            elif event.event.startswith("notify."):
                self.controls.append(event.event)
            else:
                self.received.append(int(event.id))
                budget -= 1
            if event.id:
                self.cursor = event.id


def start_publishers(count: int, processes: int, redis: str | None) -> list[subprocess.Popen]:
    env = server_env(redis)
    return [
        subprocess.Popen(
            [sys.executable, "-m", "tests.publisher", str(count), str(seed), *CHANNELS],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(processes)
    ]


def test_concurrent_publishers_reconnecting_clients_see_every_id_once_in_order(
    start_server, redis_url
):
    servers = [start_server(), start_server()]
    urls = [server.url for server in servers]
    readers = [
        Reader(urls, random.Random(seed).sample(CHANNELS, k=2 + seed % 2), seed)
        for seed in range(12)
    ]
    for reader in readers:
        reader.start()
    for reader in readers:
        assert reader.opened.wait(20), "a client never got notify.open"
        assert reader.error is None, reader.error

    publishers = start_publishers(count=250, processes=3, redis=redis_url)
    for process in publishers:
        _, err = process.communicate(timeout=180)
        assert process.returncode == 0, err

    # Then one last event per channel: each client stops once it has its channels' last ones.
    newest = Event.objects.latest("id").id
    lasts = {channel: newest + 1 + n for n, channel in enumerate(CHANNELS)}
    for reader in readers:
        reader.target = max(lasts[channel] for channel in reader.channels)
    for channel in CHANNELS:
        assert notify.publish(channel, {"last": True}).id == lasts[channel]
    rows = list(Event.objects.order_by("id").values_list("id", "channel", "data"))
    assert not any(data.get("rolled_back") for _, _, data in rows)
    assert len(rows) == 3 * (250 - 250 // 7 - (1 if 250 % 7 > 3 else 0)) + len(CHANNELS)
    for reader in readers:
        reader.join(60)
        assert reader.error is None, reader.error
        assert not reader.is_alive(), f"client stuck at {reader.cursor}, target {reader.target}"
    for reader in readers:
        expected = [
            i for i, channel, _ in rows if channel in reader.channels and i > reader.first_cursor
        ]
        assert reader.received == expected, (
            f"channels {reader.channels}: "
            f"lost {sorted(set(expected) - set(reader.received))[:10]}, "
            f"duplicated {len(reader.received) - len(set(reader.received))}"
        )
        assert "notify.reset" not in reader.controls
    assert sum(reader.reconnects for reader in readers) > 20


def publishing_through(redis: RedisServer) -> override_settings:
    """This test process publishes through ``redis`` instead of the session's Redis."""
    return override_settings(NOTIFY={"REDIS_URL": redis.url, "REDIS_PREFIX": REDIS_PREFIX})


def open_stream(server: Server, query: str = "channel=orders") -> SSEClient:
    client = SSEClient(f"{server.url}/notify/stream/?{query}")
    assert client.next().event == "notify.open"
    return client


def test_streams_survive_a_redis_restart_and_get_what_was_published_meanwhile(
    start_server, private_redis
):
    server = start_server(redis=private_redis.url)
    with publishing_through(private_redis), open_stream(server) as client:
        before = notify.publish("orders", {"n": "before"})
        assert client.next().id == str(before.id)

        private_redis.stop()
        # Stored, but the broadcast fails: the server finds it in the database, polling
        # every POLL_SECONDS (0.5) while its subscription is down.
        during = notify.publish("orders", {"n": "during"})
        published = time.monotonic()
        assert client.next().id == str(during.id)
        assert time.monotonic() - published < 2.0
        private_redis.start()

        time.sleep(1.5)  # the server's subscription reconnects (0.1 s doubling backoff)
        after = [notify.publish("orders", {"n": n}) for n in range(5)]
        got = client.take(5)
        assert [e.id for e in got] == [str(e.id) for e in after]
        assert [payload(e)["data"]["n"] for e in got] == list(range(5))


def test_a_server_started_while_redis_is_down_streams_from_the_database(
    start_server, private_redis
):
    private_redis.stop()
    server = start_server(redis=private_redis.url)
    with publishing_through(private_redis), open_stream(server) as client:
        down = notify.publish("orders", {"redis": "down"})
        assert client.next().id == str(down.id)
        private_redis.start()
        time.sleep(2.5)  # the subscription's backoff reaches 2 s while Redis is down
        up = notify.publish("orders", {"redis": "up"})
        assert client.next().id == str(up.id)


def test_embedded_broker_delivers_a_publish_from_another_process(start_server):
    server = start_server(redis=None, POLL_SECONDS=0.5)
    with open_stream(server, query="") as client:
        result = manage("send_event", "broadcast", '{"from": "cli"}')
        committed = time.monotonic()
        assert result.returncode == 0, result.stderr
        event = client.next()
        assert event.id == result.stdout.strip()
        assert payload(event)["data"] == {"from": "cli"}
        # One poll interval, with room for a loaded machine.
        assert time.monotonic() - committed < 2.0


def test_an_event_whose_notice_was_lost_reaches_streams_while_redis_is_up(start_server):
    """A publisher that could not reach Redis while the server's subscription stayed up
    leaves an event without a notice, and maybe no later notice to reveal the gap."""
    server = start_server(RECONCILE_SECONDS=1.0)
    with open_stream(server) as client:
        sent = notify.publish("orders", {"n": "notice"})
        assert client.next().id == str(sent.id)
        # Stored without publish(): no notice at all.
        silent = Event.objects.create(channel="orders", data={"n": "no notice"})
        stored = time.monotonic()
        assert client.next().id == str(silent.id)
        assert time.monotonic() - stored < 3.0
