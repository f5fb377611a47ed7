"""The events admin: publishing from the add form, read-only events, "Publish again"."""

from __future__ import annotations

import re
import time
import uuid

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.test import Client, override_settings
from django.urls import reverse
from django.utils.html import escape

import notify
from notify import admin as notify_admin
from notify import forms as notify_forms
from notify.models import Event
from tests.conftest import Server, SSEClient, payload


def staff(*codenames: str, superuser: bool = False) -> Client:
    """A client logged in as a staff user with these permissions of notify."""
    user = User.objects.create_user(
        f"staff-{uuid.uuid4().hex[:8]}", is_staff=True, is_superuser=superuser
    )
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="notify", codename__in=codenames)
    )
    client = Client()
    client.force_login(user)
    return client


def add_url() -> str:
    return reverse("admin:notify_event_add")


def changelist_url() -> str:
    return reverse("admin:notify_event_changelist")


def change_url(event: Event) -> str:
    return reverse("admin:notify_event_change", args=[event.pk])


def delete_url(event: Event) -> str:
    return reverse("admin:notify_event_delete", args=[event.pk])


def messages_of(response) -> list[str]:
    """The messages a response adds (or, after redirects were followed, shows)."""
    return [str(message) for message in get_messages(response.wsgi_request)]


def cells(response, column: str) -> list[str]:
    """The HTML inside each change list cell of ``column``, top to bottom."""
    pattern = rf'<t[dh] class="field-{column}"[^>]*>(.*?)</t[dh]>'
    return re.findall(pattern, response.content.decode(), re.S)


# -- publishing from the add form ------------------------------------------------------------


def test_add_form_publishes_to_a_live_stream(server: Server):
    client = staff("add_event", "view_event")
    with SSEClient(f"{server.url}/notify/stream/?channel=admin-live") as stream:
        assert stream.next().event == "notify.open"
        response = client.post(
            add_url(),
            {"channel": "admin-live", "event": "created", "data": '{"status": "paid", "n": 1}'},
        )
        got = stream.next()
    event = Event.objects.get()
    assert response.status_code == 302
    assert response["Location"] == changelist_url()
    assert messages_of(response) == [f"Published event #{event.pk} on channel “admin-live”."]
    assert got.id == str(event.pk)
    assert got.event == "created"
    assert payload(got)["channel"] == "admin-live"
    assert payload(got)["data"] == {"n": 1, "status": "paid"}
    assert (event.channel, event.event, event.data) == (
        "admin-live",
        "created",
        {"n": 1, "status": "paid"},
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("", None),
        ("   \n", None),
        ("null", None),
        ("42", 42),
        ('"text"', "text"),
        ('  {"b": [1, 2.5], "a": "caf\\u00e9"}\n', {"a": "café", "b": [1, 2.5]}),
        ("1e+16", 10**16),  # stored as the library normalises it
    ],
)
def test_data_is_json_and_empty_is_null(text, stored):
    response = staff("add_event").post(
        add_url(), {"channel": "c", "event": "message", "data": text}
    )
    assert response.status_code == 302
    assert Event.objects.get().data == stored


@pytest.mark.django_db
def test_add_another_returns_to_the_add_form():
    response = staff("add_event").post(
        add_url(), {"channel": "c", "event": "message", "data": "1", "_addanother": "1"}
    )
    event = Event.objects.get()
    assert response.status_code == 302
    assert response["Location"] == add_url()
    assert messages_of(response) == [f"Published event #{event.pk} on channel “c”."]
    # The admin's history records the stored row.
    assert LogEntry.objects.get().object_id == str(event.pk)


@pytest.mark.django_db
def test_add_form_offers_channels_and_defaults_the_type():
    for channel in ["orders", "user:42", "orders", "broadcast"]:
        notify.publish(channel)
    content = staff("add_event").get(add_url()).content.decode()
    assert 'list="id_channel_suggestions"' in content
    assert (
        '<datalist id="id_channel_suggestions"><option value="broadcast">'
        '<option value="orders"><option value="user:42"></datalist>'
    ) in content
    assert re.search(r'<input type="text" name="event" value="message"[^>]*>', content)
    assert re.search(r'<textarea name="data"[^>]*>\s*</textarea>', content)


@pytest.mark.django_db
def test_channel_suggestions_are_bounded_to_recent_channels(monkeypatch):
    monkeypatch.setattr(notify_forms, "SUGGESTION_SCAN", 4)
    monkeypatch.setattr(notify_forms, "MAX_SUGGESTIONS", 2)
    for channel in ["old", "d", "c", "c", "b", "a"]:
        notify.publish(channel)
    # The newest four events are on a, b, c and c: the two most recent channels are a and b.
    assert notify_forms.recent_values("channel") == ["a", "b"]
    content = staff("add_event", "view_event").get(add_url()).content.decode()
    assert '<option value="a"><option value="b"></datalist>' in content
    # The change list's filter offers the same.
    response = staff("view_event").get(changelist_url())
    assert re.findall(r'href="\?channel=(\w+)"', response.content.decode()) == ["a", "b"]


@pytest.mark.django_db
def test_channel_suggestions_are_escaped():
    # A row written around notify.api may hold anything.
    Event.objects.create(channel='x"><script>alert(1)</script>')
    content = staff("add_event").get(add_url()).content.decode()
    assert "<script>alert(1)" not in content
    assert '<option value="x&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;">' in content


FORM_ERRORS = [
    ({"data": "nope"}, "data", "Data is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
    (
        {"data": "{'a': 1}"},
        "data",
        "Data is not valid JSON: Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1)",
    ),
    ({"data": "NaN"}, "data", "Data is not valid JSON: NaN is not a JSON value"),
    ({"data": '{"a": -Infinity}'}, "data", "Data is not valid JSON: -Infinity is not a JSON value"),
    ({"data": "1e999"}, "data", "data contains NaN or Infinity, which JSON cannot represent"),
    (
        {"data": "1" * 5000},
        "data",
        "Data is not valid JSON: Exceeds the limit (4300 digits) for integer string "
        "conversion: value has 5000 digits; use sys.set_int_max_str_digits() to increase "
        "the limit",
    ),
    ({"data": "[" * 100_000}, "data", "Data is nested more than 500 levels deep"),
    ({"data": "[" * 501 + "]" * 501}, "data", "data is nested more than 500 levels deep"),
    (
        {"data": '"a\\u0000b"'},
        "data",
        "data contains a NUL character (\\u0000), which the database cannot store",
    ),
    (
        {"data": '"\\ud800"'},
        "data",
        "data contains a lone surrogate (U+D800), which is not valid Unicode",
    ),
    (
        {"channel": "has space"},
        "channel",
        'channel "has space" contains a space; use only [A-Za-z0-9_.:@/-]',
    ),
    (
        {"channel": " orders"},
        "channel",
        'channel " orders" contains a space; use only [A-Za-z0-9_.:@/-]',
    ),
    ({"channel": "a" * 201}, "channel", "channel is 201 characters long; the limit is 200"),
    ({"channel": ""}, "channel", "This field is required."),
    (
        {"event": "notify.open"},
        "event",
        'event type "notify.open" starts with "notify.", which is reserved for '
        "notify's control events",
    ),
    (
        {"event": "a;b"},
        "event",
        'event type "a;b" contains ";"; use only [A-Za-z0-9_.:-]',
    ),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("fields", "field", "message"), FORM_ERRORS)
def test_form_errors_are_shown_on_their_field_and_nothing_is_stored(fields, field, message):
    response = staff("add_event").post(
        add_url(), {"channel": "orders", "event": "message", "data": "{}", **fields}
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {field: [message]}
    assert escape(message) in response.content.decode()
    assert Event.objects.count() == 0


@pytest.mark.django_db
def test_each_field_reports_its_own_error_at_once():
    response = staff("add_event").post(
        add_url(), {"channel": "a b", "event": "notify.x", "data": "{"}
    )
    assert response.status_code == 200
    assert sorted(response.context["adminform"].form.errors) == ["channel", "data", "event"]
    assert Event.objects.count() == 0


@pytest.mark.django_db
def test_oversized_payload_is_a_form_error(settings):
    client = staff("add_event")
    with override_settings(NOTIFY={**settings.NOTIFY, "MAX_PAYLOAD_BYTES": 10}):
        response = client.post(
            add_url(), {"channel": "c", "event": "message", "data": '"123456789"'}
        )
        message = 'data is 11 bytes encoded; the limit is 10 (NOTIFY["MAX_PAYLOAD_BYTES"])'
        assert response.status_code == 200
        assert response.context["adminform"].form.errors == {"data": [message]}
        assert escape(message) in response.content.decode()
        assert Event.objects.count() == 0
        # The limit is inclusive.
        response = client.post(
            add_url(), {"channel": "c", "event": "message", "data": '"12345678"'}
        )
    assert response.status_code == 302
    assert Event.objects.get().data == "12345678"


# -- published events are read-only ----------------------------------------------------------


@pytest.mark.django_db
def test_change_view_shows_the_event_read_only():
    event = notify.publish("orders", {"status": "paid", "note": "<b>bold</b>"}, event="created")
    response = staff("view_event").get(change_url(event))
    content = response.content.decode()
    assert response.status_code == 200
    assert "View event" in content
    for value in [str(event.pk), "orders", "created"]:
        assert f'<div class="readonly">{value}</div>' in content
    assert (
        '<div class="readonly"><pre>{\n  &quot;note&quot;: &quot;&lt;b&gt;bold&lt;/b&gt;&quot;,\n'
        "  &quot;status&quot;: &quot;paid&quot;\n}</pre></div>"
    ) in content
    assert not re.search(r"<(input|textarea)[^>]*name=\"(channel|event|data)\"", content)
    assert 'name="_save"' not in content


@pytest.mark.django_db
@pytest.mark.parametrize("superuser", [False, True])
def test_posting_the_change_view_changes_nothing(superuser):
    event = notify.publish("orders", {"status": "paid"})
    client = staff("view_event", "change_event", superuser=superuser)
    response = client.post(
        change_url(event), {"channel": "other", "event": "changed", "data": '{"status": "x"}'}
    )
    assert response.status_code == 403
    event.refresh_from_db()
    assert (event.channel, event.event, event.data) == ("orders", "message", {"status": "paid"})


@pytest.mark.django_db
def test_staff_without_the_add_permission_cannot_add():
    client = staff("view_event", "change_event", "delete_event")
    assert client.get(add_url()).status_code == 403
    response = client.post(add_url(), {"channel": "c", "event": "message", "data": "1"})
    assert response.status_code == 403
    assert Event.objects.count() == 0
    assert f'href="{add_url()}"' not in client.get(changelist_url()).content.decode()


@pytest.mark.django_db
def test_staff_without_the_delete_permission_cannot_delete():
    event = notify.publish("orders", 1)
    client = staff("add_event", "view_event", "change_event")
    assert client.get(delete_url(event)).status_code == 403
    assert client.post(delete_url(event), {"post": "yes"}).status_code == 403
    assert 'value="delete_selected"' not in client.get(changelist_url()).content.decode()
    response = client.post(
        changelist_url(),
        {"action": "delete_selected", "_selected_action": [event.pk], "post": "yes"},
    )
    assert response.status_code == 302
    assert Event.objects.filter(pk=event.pk).exists()


@pytest.mark.django_db
def test_staff_with_the_delete_permission_can_delete():
    kept, deleted = notify.publish("orders", 1), notify.publish("orders", 2)
    client = staff("view_event", "delete_event")
    assert client.post(delete_url(deleted), {"post": "yes"}).status_code == 302
    assert list(Event.objects.all()) == [kept]


# -- the change list --------------------------------------------------------------------------


@pytest.mark.django_db
def test_change_list_columns_and_an_escaped_truncated_preview():
    long = notify.publish("orders", {"text": "x" * 200})
    html = notify.publish("user:42", {"note": "<script>alert(1)</script>"}, event="created")
    empty = notify.publish("broadcast")
    response = staff("view_event").get(changelist_url())
    content = response.content.decode()
    assert response.status_code == 200
    headers = re.findall(r'<th scope="col" class="[^"]*column-(\w+)', content)
    assert headers == ["id", "channel", "event", "created", "preview"]
    # Newest first.
    assert [re.sub(r"<[^>]+>", "", cell) for cell in cells(response, "id")] == [
        str(empty.pk),
        str(html.pk),
        str(long.pk),
    ]
    assert cells(response, "channel") == ["broadcast", "user:42", "orders"]
    assert cells(response, "event") == ["message", "created", "message"]
    assert cells(response, "preview") == [
        "null",
        "{&quot;note&quot;: &quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot;}",
        "{&quot;text&quot;: &quot;" + "x" * 69 + "…",
    ]
    assert "<script>alert(1)" not in content


@pytest.mark.django_db
def test_change_list_filters_search_and_date_hierarchy():
    paid = notify.publish("orders", {"status": "paid"})
    notify.publish("orders", {"status": "open"}, event="created")
    notify.publish("user:42", {"status": "open"})
    client = staff("view_event")
    content = client.get(changelist_url()).content.decode()
    assert "By channel" in content
    assert "By type" in content
    assert "?channel=user%3A42" in content
    assert "?event=created" in content
    assert "created__year=" in content  # the date hierarchy
    response = client.get(changelist_url(), {"q": "paid"})
    assert cells(response, "channel") == ["orders"]
    assert str(paid.pk) in cells(response, "id")[0]
    response = client.get(changelist_url(), {"q": "user:42"})
    assert cells(response, "channel") == ["user:42"]
    response = client.get(changelist_url(), {"channel": "orders", "event": "created"})
    assert cells(response, "event") == ["created"]


# -- "Publish again" --------------------------------------------------------------------------


def publish_again(client: Client, *events: Event):
    return client.post(
        changelist_url(),
        {"action": "publish_again", "_selected_action": [event.pk for event in events]},
        follow=True,
    )


@pytest.mark.django_db
def test_publish_again_publishes_copies_in_id_order():
    first = notify.publish("orders", {"status": "paid"}, event="created")
    second = notify.publish("user:42", [1, "two"])
    client = staff("add_event", "view_event")
    assert 'value="publish_again"' in client.get(changelist_url()).content.decode()
    response = publish_again(client, second, first)
    assert response.redirect_chain == [(changelist_url(), 302)]
    copies = list(Event.objects.filter(pk__gt=second.pk))
    assert [(e.channel, e.event, e.data) for e in copies] == [
        ("orders", "created", {"status": "paid"}),
        ("user:42", "message", [1, "two"]),
    ]
    assert messages_of(response) == [f"Published 2 events again: #{copies[0].pk}, #{copies[1].pk}"]
    assert Event.objects.count() == 4


@pytest.mark.django_db
def test_publish_again_needs_the_add_permission():
    event = notify.publish("orders", 1)
    client = staff("view_event", "change_event", "delete_event")
    assert 'value="publish_again"' not in client.get(changelist_url()).content.decode()
    response = publish_again(client, event)
    assert messages_of(response) == ["No action selected."]
    assert list(Event.objects.all()) == [event]


@pytest.mark.django_db
def test_publish_again_refuses_an_event_that_no_longer_validates(settings):
    small = notify.publish("orders", 1)
    large = notify.publish("orders", "x" * 50)
    with override_settings(NOTIFY={**settings.NOTIFY, "MAX_PAYLOAD_BYTES": 10}):
        response = publish_again(staff("add_event", "view_event"), small, large)
    assert messages_of(response) == [
        f"Nothing published: event #{large.pk} cannot be published again: data is 52 bytes "
        'encoded; the limit is 10 (NOTIFY["MAX_PAYLOAD_BYTES"])'
    ]
    assert Event.objects.count() == 2


@pytest.mark.django_db
def test_publish_again_is_bounded(monkeypatch):
    monkeypatch.setattr(notify_admin, "MAX_REPUBLISH", 2)
    events = [notify.publish("orders", n) for n in range(3)]
    client = staff("add_event", "view_event")
    response = publish_again(client, *events)
    assert messages_of(response) == ["Nothing published: select at most 2 events to publish again."]
    assert Event.objects.count() == 3
    response = publish_again(client, *events[:2])
    assert messages_of(response)[0].startswith("Published 2 events again: #")
    response = publish_again(client, events[0])
    assert messages_of(response) == [f"Published 1 event again: #{Event.objects.last().pk}"]
    assert Event.objects.count() == 6


# -- open streams ----------------------------------------------------------------------------


def stream_count_line(response) -> str | None:
    found = re.search(
        r'<p class="help notify-stream-counts">(.*?)</p>', response.content.decode(), re.S
    )
    return None if found is None else " ".join(re.sub(r"<[^>]+>", "", found.group(1)).split())


def test_change_list_shows_the_open_streams_of_its_channels(start_server):
    server = start_server(PRESENCE_SECONDS=0.2)
    client = staff("view_event")
    notify.publish("news", 1)
    notify.publish("sport", 2)
    with (
        SSEClient(f"{server.url}/notify/stream/?channel=news") as first,
        SSEClient(f"{server.url}/notify/stream/?channel=news&channel=hidden") as second,
    ):
        assert first.next().event == second.next().event == "notify.open"
        deadline = time.monotonic() + 5
        while (line := stream_count_line(client.get(changelist_url()))) != (
            "Open streams now, for the channels on this page: news 2 · sport 0"
        ):
            assert time.monotonic() < deadline, line
            time.sleep(0.1)
        # Filtered to one channel: the page has only that channel's count.
        response = client.get(changelist_url(), {"channel": "sport"})
        assert stream_count_line(response) == (
            "Open streams now, for the channels on this page: sport 0"
        )


def test_change_list_counts_only_channels_the_user_may_read(start_server, settings):
    settings.NOTIFY = {**settings.NOTIFY, "AUTHORIZE": "notify.authorization.default_policy"}
    server = start_server(PRESENCE_SECONDS=0.2)
    client = staff("view_event")
    notify.publish("broadcast", 1)
    notify.publish("user:999999", 2)
    with SSEClient(f"{server.url}/notify/stream/?channel=broadcast") as stream:
        assert stream.next().event == "notify.open"
        deadline = time.monotonic() + 5
        while (line := stream_count_line(client.get(changelist_url()))) != (
            "Open streams now, for the channels on this page: broadcast 1"
        ):
            assert time.monotonic() < deadline, line
            time.sleep(0.1)


@pytest.mark.django_db
def test_change_list_without_a_reachable_broker_shows_no_counts(settings):
    notify.publish("news", 1)
    settings.NOTIFY = {**settings.NOTIFY, "REDIS_URL": "redis://127.0.0.1:1/0"}
    response = staff("view_event").get(changelist_url())
    assert response.status_code == 200
    assert stream_count_line(response) is None
    assert cells(response, "channel")
