"""``GET /notify/history/`` (notify.views.history): pages of stored events, newest first, and
a stream opened from a page's ``newest`` continuing exactly where the page left off."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client, override_settings
from django.urls import reverse

import notify
from notify.models import Event
from tests.conftest import SSEClient, StartServer
from tests.policies import POLICY
from tests.test_asgi import message_ids, publish_many, stream_url

pytestmark = pytest.mark.django_db


def get(client: Client, *channels: str, **params: Any) -> Any:
    query: list[tuple[str, Any]] = [("channel", channel) for channel in channels]
    query += list(params.items())
    return client.get(reverse("notify:history"), query_params=query)


def stream_data(event: Event) -> dict[str, Any]:
    """What the stream carries on the ``data:`` line of ``event``."""
    data_line = event.sse_frame().decode().split("\n")[2]
    return json.loads(data_line.removeprefix("data: "))


def assert_error(response: Any, status: int, *fragments: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    for fragment in fragments:
        assert fragment in body["error"], (fragment, body)
    return body


# -- pages ------------------------------------------------------------------------------------


def test_paging_through_interleaved_channels(client):
    events = publish_many(["a", "c", "b", "a", "c", "c", "b", "b", "a", "c", "a", "b", "c"])
    wanted = [e for e in reversed(events) if e.channel in ("a", "b")]
    newest = events[-1].id
    pages = []
    before = None
    while True:
        params = {"limit": 3} if before is None else {"limit": 3, "before": before}
        response = get(client, "a", "b", **params)
        assert response.status_code == 200
        assert response["Cache-Control"] == "no-store"
        page = response.json()
        assert page["newest"] == newest
        pages.append(page["events"])
        before = page["next_before"]
        if before is None:
            break
        assert before == page["events"][-1]["id"]
    assert [len(events) for events in pages] == [3, 3, 2]
    got = [event for page in pages for event in page]
    # Newest first, each once, only the channels asked for, as the stream carries them.
    assert got == [stream_data(event) for event in wanted]


def test_the_last_full_page_ends_the_paging(client):
    events = publish_many(["a"] * 4)
    first = get(client, "a", limit=2).json()
    assert [e["id"] for e in first["events"]] == [events[3].id, events[2].id]
    second = get(client, "a", limit=2, before=first["next_before"]).json()
    assert [e["id"] for e in second["events"]] == [events[1].id, events[0].id]
    assert second["next_before"] is None


def test_defaults_broadcast_and_50(client):
    Event.objects.bulk_create(Event(channel="broadcast", data={"n": n}) for n in range(55))
    Event.objects.create(channel="other")
    page = get(client).json()
    assert len(page["events"]) == 50
    assert {e["channel"] for e in page["events"]} == {"broadcast"}
    assert page["next_before"] == page["events"][-1]["id"]
    rest = get(client, before=page["next_before"]).json()
    assert len(rest["events"]) == 5
    assert rest["next_before"] is None


def test_the_limit_may_be_200(client):
    Event.objects.bulk_create(Event(channel="a") for _ in range(201))
    page = get(client, "a", limit=200).json()
    assert len(page["events"]) == 200
    assert page["next_before"] is not None


def test_before_zero_is_an_empty_last_page(client):
    publish_many(["a"])
    assert get(client, "a", before=0).json()["events"] == []
    assert get(client, "a", before=0).json()["next_before"] is None


def test_empty_history(client):
    assert get(client, "a").json() == {"events": [], "next_before": None, "newest": 0}


def test_newest_counts_every_channel(client):
    events = publish_many(["a", "b"])
    page = get(client, "a").json()
    assert [e["id"] for e in page["events"]] == [events[0].id]
    assert page["newest"] == events[1].id


def test_head(client):
    publish_many(["broadcast"])
    response = client.head(reverse("notify:history"))
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"


# -- errors -----------------------------------------------------------------------------------

BAD_PARAMS: list[tuple[list[str], dict[str, Any], str]] = [
    (["a b"], {}, 'channel "a b" contains a space'),
    ([""], {}, "channel is empty"),
    (["a", "a"], {}, 'channel "a" is given twice'),
    ([f"c{n}" for n in range(33)], {}, "33 channels requested; the limit is 32"),
    (["a"], {"limit": 0}, "limit is 0; use 1 to 200"),
    (["a"], {"limit": 201}, "limit is 201; use 1 to 200"),
    (["a"], {"limit": "ten"}, 'limit "ten" is not a non-negative integer'),
    (["a"], {"limit": "-1"}, 'limit "-1" is not a non-negative integer'),
    (["a"], {"limit": ""}, 'limit "" is not'),
    (["a"], {"before": "x"}, 'before "x" is not a non-negative integer'),
    (["a"], {"before": "1.5"}, 'before "1.5" is not'),
    (["a"], {"before": "\uff15"}, "is not a non-negative integer"),
    (["a"], {"before": "1" * 21}, "at most 20 digits"),
]


@pytest.mark.parametrize(("channels", "params", "reason"), BAD_PARAMS)
def test_bad_parameters_are_400(client, channels, params, reason):
    assert_error(get(client, *channels, **params), 400, reason)


def test_a_repeated_parameter_is_400(client):
    response = client.get(reverse("notify:history") + "?before=5&before=6")
    assert_error(response, 400, "before is given 2 times")


def test_a_cursor_of_20_digits_is_a_before(client):
    events = publish_many(["a"])
    assert get(client, "a", before="9" * 20).json()["events"][0]["id"] == events[0].id


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_other_methods_are_405(method):
    # CSRF enforced: the 405 is not preceded by a CSRF 403.
    response = Client(enforce_csrf_checks=True).generic(method, reverse("notify:history"))
    assert_error(response, 405, "GET or HEAD")
    assert response["Allow"] == "GET, HEAD"


# -- authorization ----------------------------------------------------------------------------


@pytest.fixture
def policy() -> Iterator[None]:
    with override_settings(NOTIFY={**settings.NOTIFY, "AUTHORIZE": POLICY}):
        yield


def test_refused_channels_are_403_and_named(client, policy):
    publish_many(["staff", "news"])
    response = get(client, "news", "staff", "user:1")
    body = assert_error(response, 403, 'not allowed to read channels "staff", "user:1"')
    assert body["channels"] == ["staff", "user:1"]
    assert "events" not in body
    assert_error(get(client, "staff"), 403, 'not allowed to read channel "staff"')


def test_allowed_channels_are_read(client, policy):
    user = User.objects.create_user("alice")
    events = publish_many(["news", f"user:{user.pk}", "staff"])
    assert get(client, "news").status_code == 200
    client.force_login(user)
    page = get(client, "news", f"user:{user.pk}").json()
    assert [e["id"] for e in page["events"]] == [events[1].id, events[0].id]
    assert_error(get(client, "staff"), 403, '"staff"')
    assert_error(get(client, f"user:{user.pk + 1}"), 403, f'"user:{user.pk + 1}"')
    client.force_login(User.objects.create_user("boss", is_staff=True))
    assert [e["id"] for e in get(client, "staff").json()["events"]] == [events[2].id]


def test_bad_parameters_are_reported_before_authorization(client, policy):
    assert_error(get(client, "staff", limit=0), 400, "limit")


# -- with the stream ----------------------------------------------------------------------------


def test_a_stream_opened_at_newest_continues_the_page(start_server: StartServer):
    server = start_server()
    before = publish_many(["a", "b", "c", "a"])
    response = httpx.get(
        f"{server.url}{reverse('notify:history')}",
        params=[("channel", "a"), ("channel", "b")],
        timeout=10,
    )
    page = response.json()
    assert [e["id"] for e in page["events"]] == [before[3].id, before[1].id, before[0].id]
    newest = page["newest"]
    assert newest == before[-1].id
    # Published after the page was read: the stream must bring these, and only these.
    after = publish_many(["c", "b", "a", "c"])
    url = stream_url(server, "a", "b", lastEventId=str(newest))
    with SSEClient(url) as stream:
        got = stream.until(lambda e: e.event == "notify.catchup-end")
        live = notify.publish("a", "live")
        assert stream.next().id == str(live.id)
    assert got[0].event == "notify.catchup-start"
    assert message_ids(got) == [after[1].id, after[2].id]
