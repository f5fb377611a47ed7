"""``GET /notify/presence/`` (notify.views.presence): open streams per channel over every
server process, null when the broker cannot tell, only for channels the user may read."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client, override_settings
from django.urls import reverse

from tests.conftest import REDIS_PREFIX, SSEClient, StartServer
from tests.policies import POLICY

pytestmark = pytest.mark.django_db


def get(client: Client, *channels: str) -> Any:
    return client.get(reverse("notify:presence"), query_params=[("channel", c) for c in channels])


def assert_error(response: Any, status: int, fragment: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert fragment in body["error"], body
    return body


@pytest.mark.django_db(transaction=True)
def test_counts_the_open_streams_of_every_channel_asked_for(
    client: Client, start_server: StartServer
) -> None:
    # A prefix of its own: a stopped server's report lingers for three intervals.
    prefix = f"{REDIS_PREFIX}-{uuid.uuid4().hex[:8]}"
    server = start_server(REDIS_PREFIX=prefix, PRESENCE_SECONDS=0.2)
    with (
        override_settings(NOTIFY={**settings.NOTIFY, "REDIS_PREFIX": prefix}),
        SSEClient(f"{server.url}/notify/stream/?channel=news") as a,
        SSEClient(f"{server.url}/notify/stream/?channel=news&channel=sport") as b,
    ):
        assert a.next().event == b.next().event == "notify.open"
        deadline = time.monotonic() + 5
        while (counts := get(client, "news", "sport", "other").json()) != {
            "news": 2,
            "sport": 1,
            "other": 0,
        }:
            assert time.monotonic() < deadline, counts
            time.sleep(0.05)
        response = get(client, "sport", "news")
    assert response["Cache-Control"] == "no-store"
    assert list(response.json()) == ["sport", "news"]


def test_broadcast_when_no_channel_is_named(client: Client) -> None:
    assert list(get(client).json()) == ["broadcast"]


def test_null_when_the_broker_cannot_tell(client: Client) -> None:
    with override_settings(NOTIFY={**settings.NOTIFY, "REDIS_URL": "redis://127.0.0.1:1/0"}):
        response = get(client, "news", "sport")
    assert response.status_code == 200
    assert response.json() == {"news": None, "sport": None}


def test_null_at_once_when_the_broker_does_not_answer(client: Client, private_redis: Any) -> None:
    with override_settings(NOTIFY={**settings.NOTIFY, "REDIS_URL": private_redis.url}):
        assert get(client, "news").json() == {"news": 0}
        private_redis.pause()
        try:
            started = time.monotonic()
            response = get(client, "news", "sport")
            took = time.monotonic() - started
        finally:
            private_redis.resume()
    assert response.status_code == 200
    assert response.json() == {"news": None, "sport": None}
    assert took < 1.0


@pytest.mark.parametrize(
    ("channels", "reason"),
    [
        (["a b"], 'channel "a b" contains a space'),
        ([""], "channel is empty"),
        (["a", "a"], 'channel "a" is given twice'),
        ([f"c{n}" for n in range(33)], "33 channels requested; the limit is 32"),
    ],
)
def test_bad_channels_are_400(client: Client, channels: list[str], reason: str) -> None:
    assert_error(get(client, *channels), 400, reason)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_other_methods_are_405(method: str) -> None:
    # CSRF enforced: the 405 is not preceded by a CSRF 403.
    response = Client(enforce_csrf_checks=True).generic(method, reverse("notify:presence"))
    assert_error(response, 405, "GET or HEAD")
    assert response["Allow"] == "GET, HEAD"


def test_head(client: Client) -> None:
    response = client.head(reverse("notify:presence"))
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"


# -- authorization ----------------------------------------------------------------------------


@pytest.fixture
def policy() -> Iterator[None]:
    with override_settings(NOTIFY={**settings.NOTIFY, "AUTHORIZE": POLICY}):
        yield


def test_refused_channels_are_403_and_named(client: Client, policy: None) -> None:
    body = assert_error(
        get(client, "news", "staff", "user:1"),
        403,
        'not allowed to read channels "staff", "user:1"',
    )
    assert body == {
        "error": 'not allowed to read channels "staff", "user:1"',
        "channels": ["staff", "user:1"],
    }


def test_refused_before_the_broker_is_asked(client: Client, policy: None) -> None:
    # A refusal tells nothing of the counts, whether or not the broker could tell them.
    with override_settings(NOTIFY={**settings.NOTIFY, "REDIS_URL": "redis://127.0.0.1:1/0"}):
        assert_error(get(client, "staff"), 403, 'not allowed to read channel "staff"')


def test_allowed_channels_are_counted(client: Client, policy: None) -> None:
    user = User.objects.create_user("alice")
    client.force_login(user)
    assert get(client, "news", f"user:{user.pk}").json() == {"news": 0, f"user:{user.pk}": 0}
    assert_error(get(client, f"user:{user.pk + 1}"), 403, f'"user:{user.pk + 1}"')
    client.force_login(User.objects.create_user("boss", is_staff=True))
    assert get(client, "staff").json() == {"staff": 0}


def test_bad_channels_are_reported_before_authorization(client: Client, policy: None) -> None:
    assert_error(get(client, "staff", "a b"), 400, 'channel "a b"')
