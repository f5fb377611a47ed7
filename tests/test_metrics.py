"""GET /notify/metrics/ and what notify.metrics counts.

Every figure is its process's own: a server's deliveries are read from that server's
/notify/metrics/, a publish from the process that published (``notify.metrics.REGISTRY``
here, for the tests' own publishes)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest
from django.contrib.auth.models import User
from django.db import transaction
from django.test import Client, override_settings
from django.urls import reverse
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

import notify
from notify.api import prepare, publish_many
from notify.db import db_call
from notify.hub import get_hub
from notify.metrics import REGISTRY
from notify.models import Event
from notify.sse import created_timestamp, open_frame
from notify.validation import MAX_CHANNEL_LENGTH, MAX_EVENT_LENGTH
from tests.conftest import SSEClient

TOKEN = "metrics-token-of-the-tests-0123456789"
PUBLISH_TOKEN = "publish-token-of-the-tests-0123456789"
METRIC_NAMES = {
    "notify_open_streams",
    "notify_streams_opened",
    "notify_events_published",
    "notify_events_delivered",
    "notify_replays",
    "notify_events_replayed",
    "notify_resets",
    "notify_slow_client_disconnects",
    "notify_broker_reconnects",
    "notify_polling_fallbacks",
    "notify_delivery_latency_seconds",
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def here(name: str, **labels: str) -> float:
    """A sample of this process's registry (0 when it has none yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def server_metrics(url: str) -> Samples:
    response = httpx.get(
        f"{url}/notify/metrics/", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def with_notify(settings, **changes):
    return override_settings(NOTIFY={**settings.NOTIFY, **changes})


def staff_client(**fields: bool) -> Client:
    client = Client()
    client.force_login(User.objects.create_user("operator", is_staff=True, **fields))
    return client


# -- who may read them -----------------------------------------------------------------------


@pytest.mark.django_db
def test_anonymous_is_refused():
    response = Client().get(reverse("notify:metrics"))
    assert response.status_code == 403
    assert response["Content-Type"].startswith("text/plain")
    assert response["Cache-Control"] == "no-store"
    assert b"staff users" in response.content and b"METRICS_TOKEN" in response.content
    assert b"notify_" not in response.content


@pytest.mark.django_db
def test_a_user_who_is_not_staff_is_refused():
    client = Client()
    client.force_login(User.objects.create_user("reader"))
    assert client.get(reverse("notify:metrics")).status_code == 403


@pytest.mark.django_db
def test_an_inactive_staff_user_is_refused():
    assert staff_client(is_active=False).get(reverse("notify:metrics")).status_code == 403


@pytest.mark.django_db
def test_staff_read_every_metric_in_prometheus_text():
    response = staff_client().get(reverse("notify:metrics"))
    assert response.status_code == 200
    assert response["Content-Type"] == CONTENT_TYPE_LATEST
    assert response["Cache-Control"] == "no-store"
    families = {family.name for family in text_string_to_metric_families(response.text)}
    # prometheus_client adds a <counter>_created series (a project may switch them off with
    # PROMETHEUS_DISABLE_CREATED_SERIES=True, for every registry at once).
    assert {name for name in families if not name.endswith("_created")} == METRIC_NAMES
    samples = parse(response.text)
    for reason in ("invalid-cursor", "unknown-cursor", "history-gone"):
        assert ("notify_resets_total", frozenset({("reason", reason)})) in samples


@pytest.mark.django_db
def test_the_metrics_token_reads_them(settings):
    with with_notify(settings, METRICS_TOKEN=TOKEN):
        response = Client().get(reverse("notify:metrics"), HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert "notify_open_streams" in response.text


@pytest.mark.django_db
@pytest.mark.parametrize("metrics_token", [TOKEN, None])
@pytest.mark.parametrize(
    "authorization",
    ["Bearer wrong", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer ", "Bearer None"],
)
def test_a_wrong_token_is_refused(settings, metrics_token, authorization):
    with with_notify(settings, METRICS_TOKEN=metrics_token):
        response = Client().get(reverse("notify:metrics"), HTTP_AUTHORIZATION=authorization)
    assert response.status_code == 403
    assert b"bearer token" in response.content


@pytest.mark.django_db
def test_a_bearer_token_is_judged_alone_whatever_the_session(settings):
    with with_notify(settings, METRICS_TOKEN=TOKEN):
        response = staff_client().get(reverse("notify:metrics"), HTTP_AUTHORIZATION="Bearer wrong")
    assert response.status_code == 403


@pytest.mark.django_db
def test_other_methods_are_not_allowed():
    assert staff_client().post(reverse("notify:metrics")).status_code == 405


@pytest.mark.parametrize("token", [True, 12345678])
def test_a_metrics_token_that_is_not_a_string_is_no_token_though_no_check_ran(start_server, token):
    # notify.E015 reports it, but daphne runs no system check: str() made "True" a token.
    server = start_server(METRICS_TOKEN=token)
    response = httpx.get(
        f"{server.url}/notify/metrics/", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert response.status_code == 403
    assert 'NOTIFY["METRICS_TOKEN"] must be None or a non-empty string' in server.output()


# -- what a server counts --------------------------------------------------------------------


def test_a_server_counts_its_streams_what_it_publishes_and_what_it_delivers(start_server):
    server = start_server(METRICS_TOKEN=TOKEN, PUBLISH_TOKENS=[PUBLISH_TOKEN])
    before = server_metrics(server.url)
    assert value(before, "notify_open_streams") == 0
    assert value(before, "notify_events_delivered_total") == 0
    published_here = here("notify_events_published_total")
    with (
        SSEClient(f"{server.url}/notify/stream/?channel=news") as first,
        SSEClient(f"{server.url}/notify/stream/?channel=news&channel=sport") as second,
    ):
        assert first.next().event == second.next().event == "notify.open"
        # One event published by the server (its publish API), one by this process.
        response = httpx.post(
            f"{server.url}/notify/publish/",
            json={"channel": "news", "data": 1},
            headers={"Authorization": f"Bearer {PUBLISH_TOKEN}"},
        )
        assert response.status_code == 201, response.text
        notify.publish("news", 2)
        for client in (first, second):
            assert [event.event for event in client.take(2)] == ["message", "message"]
        samples = server_metrics(server.url)
        assert value(samples, "notify_open_streams") == 2
        assert value(samples, "notify_events_published_total") == 1
        assert value(samples, "notify_events_delivered_total") == 4  # 2 events, 2 streams
        assert value(samples, "notify_delivery_latency_seconds_count") == 2
        assert value(samples, "notify_delivery_latency_seconds_bucket", le="1.0") == 2
        assert 0 < value(samples, "notify_delivery_latency_seconds_sum") < 2
    assert here("notify_events_published_total") == published_here + 1
    deadline = time.monotonic() + 5
    while value(server_metrics(server.url), "notify_open_streams") != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_server_counts_catch_ups_and_resets_by_reason(start_server):
    server = start_server(METRICS_TOKEN=TOKEN)
    events = [notify.publish("news", n) for n in range(4)]
    # Retention took the first two: a client whose cursor is the first gets history-gone.
    Event.objects.filter(id__lte=events[1].id).delete()
    url = f"{server.url}/notify/stream/?channel=news"
    with SSEClient(url, last_event_id=str(events[0].id)) as behind:
        seen = behind.until(lambda event: event.event == "notify.catchup-end")
        assert [event.event for event in seen] == [
            "notify.reset",
            "notify.catchup-start",
            "message",
            "message",
            "notify.catchup-end",
        ]
    for cursor in ("not-a-cursor", str(events[-1].id + 1000)):
        with SSEClient(url, last_event_id=cursor) as reset:
            assert reset.next().event == "notify.reset"
    samples = server_metrics(server.url)
    assert value(samples, "notify_replays_total") == 1
    assert value(samples, "notify_events_replayed_total") == 2
    assert value(samples, "notify_resets_total", reason="history-gone") == 1
    assert value(samples, "notify_resets_total", reason="invalid-cursor") == 1
    assert value(samples, "notify_resets_total", reason="unknown-cursor") == 1


# -- what this process counts ----------------------------------------------------------------


class Rollback(Exception):
    pass


@pytest.mark.django_db(transaction=True)
def test_events_are_counted_as_published_once_committed():
    before = here("notify_events_published_total")
    notify.publish("news", 1)
    publish_many([prepare("news", n) for n in range(3)])
    assert here("notify_events_published_total") == before + 4
    with contextlib.suppress(Rollback), transaction.atomic():
        notify.publish("news", "rolled back")
        raise Rollback
    with transaction.atomic():
        notify.publish("news", 5)
        assert here("notify_events_published_total") == before + 4
    assert here("notify_events_published_total") == before + 5


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.django_db(transaction=True)
def test_the_hub_counts_per_event_and_closes_slow_clients(settings):
    """Deliveries counted per stream, the latency once per event that a stream wants, the
    open streams read from the hub, a client too slow counted as it is closed."""
    with with_notify(settings, BROKER="notify.broker.local.LocalBroker", MAX_BUFFER=2):

        async def main() -> None:
            hub = get_hub()
            # Through db_call: its thread closes the connection it opens.
            publish = functools.partial(db_call, notify.publish)
            try:
                news = [await hub.subscribe(["news"]) for _ in range(3)]
                other = await hub.subscribe(["other"])
                for subscriber in [*news, other]:
                    subscriber.go_live(0)
                assert here("notify_open_streams") == 4
                delivered = here("notify_events_delivered_total")
                observed = here("notify_delivery_latency_seconds_count")
                slow = here("notify_slow_client_disconnects_total")

                await publish("news", 1)
                await until(lambda: all(subscriber.frames for subscriber in news))
                assert here("notify_events_delivered_total") == delivered + 3
                assert here("notify_delivery_latency_seconds_count") == observed + 1

                unwanted = await publish("nobody-listens", 2)
                await until(lambda: hub.last_id is not None and hub.last_id >= unwanted.id)
                assert here("notify_events_delivered_total") == delivered + 3
                assert here("notify_delivery_latency_seconds_count") == observed + 1

                # Two of the news streams read; the third, with MAX_BUFFER=2 waiting, does
                # not: the next event closes it as too slow.
                news[1].take(), news[2].take()
                await publish("news", 3)
                await publish("news", 4)
                await until(lambda: news[0].closed is not None)
                assert news[0].closed == "too-slow"
                assert news[1].closed is None and news[2].closed is None
                assert here("notify_slow_client_disconnects_total") == slow + 1
                assert here("notify_events_delivered_total") == delivered + 9

                for subscriber in [*news, other]:
                    hub.unsubscribe(subscriber)
                assert here("notify_open_streams") == 0
            finally:
                hub.close()

        asyncio.run(main())


@pytest.mark.django_db(transaction=True)
def test_the_hub_counts_redis_reconnects_and_each_fallback_to_polling(settings, private_redis):
    with with_notify(settings, REDIS_URL=private_redis.url, POLL_SECONDS=0.05):

        async def main() -> None:
            hub = get_hub()
            try:
                await until(lambda: hub.broker.connected)
                fallbacks = here("notify_polling_fallbacks_total")
                reconnects = here("notify_broker_reconnects_total")
                await asyncio.sleep(0.2)
                assert here("notify_polling_fallbacks_total") == fallbacks

                await asyncio.to_thread(private_redis.stop)
                await until(lambda: here("notify_polling_fallbacks_total") == fallbacks + 1)
                await asyncio.sleep(0.3)  # polling on: counted once, not at every poll
                assert here("notify_polling_fallbacks_total") == fallbacks + 1
                assert here("notify_broker_reconnects_total") == reconnects

                await asyncio.to_thread(private_redis.start)
                await until(lambda: here("notify_broker_reconnects_total") == reconnects + 1, 10)
                await until(lambda: hub.broker.connected)

                await asyncio.to_thread(private_redis.stop)
                await until(lambda: here("notify_polling_fallbacks_total") == fallbacks + 2)
            finally:
                hub.close()

        asyncio.run(main())


# -- what the latency is measured from -------------------------------------------------------


def test_the_latency_starts_at_the_created_time_the_frame_carries():
    created = datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC)
    frame = Event(
        id=42, channel="orders", event="paid", data={"created": "2000-01-01"}, created=created
    ).sse_frame()
    assert created_timestamp(frame) == created.timestamp()
    # The longest id, type and channel still leave it where the search looks.
    longest = Event(
        id=2**63 - 1,
        channel="c" * MAX_CHANNEL_LENGTH,
        event="e" * MAX_EVENT_LENGTH,
        data=None,
        created=created,
    ).sse_frame()
    assert created_timestamp(longest) == created.timestamp()
    assert created_timestamp(open_frame(42)) is None
