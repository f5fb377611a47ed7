"""The default policy, ``notify.authorization.default_policy``: each of its rules, and on
streams served by a real daphne to a browser's session cookie. (tests/settings.py sets
``allow_all`` for the rest of the suite.)"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser, Group, User
from django.test import override_settings

import notify
from notify import authorization
from notify.conf import DEFAULTS
from tests.conftest import SSEClient, StartServer, payload
from tests.test_asgi import stream_url
from tests.test_stream_authorization import assert_refused, session_cookie

DEFAULT = "notify.authorization.default_policy"
policy = authorization.default_policy


def test_it_is_the_default():
    assert DEFAULTS["AUTHORIZE"] == DEFAULT
    with override_settings(NOTIFY={}):
        assert authorization.policy() is policy
        assert not authorization.is_open()
    # None, the old default, is no longer "everything is open".
    with override_settings(NOTIFY={"AUTHORIZE": None}):
        assert authorization.policy() is policy
    with override_settings(NOTIFY={"AUTHORIZE": "notify.authorization.allow_all"}):
        assert authorization.is_open()


@pytest.mark.parametrize("channel", ["broadcast", "public:news", "public:a/b", "public:"])
def test_public_channels_are_open_to_everyone(channel):
    assert policy(AnonymousUser(), channel)
    assert policy(None, channel)  # a project without django.contrib.auth


@pytest.mark.parametrize(
    "channel",
    ["news", "broadcaster", "publicity", "user:1", "group:editors", "staff:alerts", "staff"],
)
def test_anonymous_reads_nothing_else(channel):
    assert not policy(AnonymousUser(), channel)
    assert not policy(None, channel)


@pytest.mark.django_db
def test_user_channels_are_their_owners_only():
    alice = User.objects.create_user("alice")
    bob = User.objects.create_user("bob")
    assert policy(alice, f"user:{alice.pk}")
    assert not policy(alice, f"user:{bob.pk}")
    assert not policy(alice, "user:abc")
    assert not policy(alice, "user:")
    assert not policy(alice, f"user:{alice.pk}0")
    assert not policy(alice, f"user:{alice.pk}:inbox")


@pytest.mark.django_db
def test_group_channels_are_their_members_only():
    editors = Group.objects.create(name="editors")
    Group.objects.create(name="readers")
    alice = User.objects.create_user("alice")
    alice.groups.add(editors)
    bob = User.objects.create_user("bob")
    assert policy(alice, "group:editors")
    assert not policy(alice, "group:readers")
    assert not policy(alice, "group:nobody-has-this")
    assert not policy(alice, "group:")
    assert not policy(bob, "group:editors")


@pytest.mark.django_db
def test_staff_channels_are_active_staff_only():
    boss = User.objects.create_user("boss", is_staff=True)
    alice = User.objects.create_user("alice")
    assert policy(boss, "staff:alerts")
    assert policy(boss, "staff:")
    assert not policy(alice, "staff:alerts")
    # "staff" without a colon is an ordinary channel: refused.
    assert not policy(boss, "staff")


@pytest.mark.django_db
def test_an_inactive_user_reads_public_channels_only():
    editors = Group.objects.create(name="editors")
    ghost = User.objects.create_user("ghost", is_staff=True, is_active=False)
    ghost.groups.add(editors)
    assert policy(ghost, "broadcast")
    assert policy(ghost, "public:news")
    assert not policy(ghost, f"user:{ghost.pk}")
    assert not policy(ghost, "group:editors")
    assert not policy(ghost, "staff:alerts")


@pytest.mark.django_db
def test_other_channels_are_refused_even_to_superusers():
    root = User.objects.create_superuser("root")
    assert not policy(root, "orders")
    assert not policy(root, "users:1")


@pytest.mark.django_db
def test_check_gives_the_user_of_the_stream():
    alice = User.objects.create_user("alice")
    with override_settings(NOTIFY={}):
        access = authorization.check(alice, [f"user:{alice.pk}", "orders"])
        assert access == authorization.Access(["orders"], str(alice.pk))
        assert authorization.check(AnonymousUser(), ["broadcast"]) == ([], None)


# -- on a real stream -------------------------------------------------------------------------


def test_a_user_streams_their_channels_and_is_refused_others(start_server: StartServer):
    server = start_server(AUTHORIZE=DEFAULT)
    editors = Group.objects.create(name="editors")
    alice = User.objects.create_user("alice")
    alice.groups.add(editors)
    bob = User.objects.create_user("bob")
    cookie = session_cookie(alice)
    bobs = f"user:{bob.pk}"
    assert_refused(stream_url(server, bobs), f'not allowed to read channel "{bobs}"', cookie)
    assert_refused(
        stream_url(server, "broadcast", "staff:alerts", "orders"),
        'not allowed to read channels "staff:alerts", "orders"',
        cookie,
    )
    assert_refused(
        stream_url(server, f"user:{alice.pk}"), f'not allowed to read channel "user:{alice.pk}"'
    )
    url = stream_url(server, "broadcast", f"user:{alice.pk}", "group:editors")
    with SSEClient(url, headers={"Cookie": cookie}) as stream:
        assert stream.next().event == "notify.open"
        notify.publish(bobs, "not for alice")
        mine = notify.publish(f"user:{alice.pk}", "for alice")
        group = notify.publish("group:editors", "for editors")
        assert [event.id for event in stream.take(2)] == [str(mine.id), str(group.id)]
    # Without a cookie: the public channels only.
    with SSEClient(stream_url(server)) as stream:
        assert stream.next().event == "notify.open"
    assert "Traceback" not in server.output()


def test_replay_returns_only_the_channels_of_the_stream(start_server: StartServer):
    server = start_server(AUTHORIZE=DEFAULT)
    alice = User.objects.create_user("alice")
    bob = User.objects.create_user("bob")
    cookie = session_cookie(alice)
    first = notify.publish("public:start")
    mine = []
    for n in range(5):
        notify.publish(f"user:{bob.pk}", {"n": n, "for": "bob"})
        mine.append(notify.publish(f"user:{alice.pk}", {"n": n}))
        notify.publish("staff:alerts", {"n": n})
        notify.publish("group:editors", {"n": n})
        mine.append(notify.publish("broadcast", {"n": n}))
    url = stream_url(server, f"user:{alice.pk}", "broadcast", lastEventId=str(first.id))
    with SSEClient(url, headers={"Cookie": cookie}) as stream:
        events = stream.until(lambda event: event.event == "notify.catchup-end")
    assert events[0].event == "notify.catchup-start"
    replayed = events[1:-1]
    assert [event.id for event in replayed] == [str(event.id) for event in mine]
    assert {payload(event)["channel"] for event in replayed} == {f"user:{alice.pk}", "broadcast"}
    assert payload(events[-1])["count"] == 10
    # Asking for another's channel with a cursor is refused before anything is read.
    bobs = f"user:{bob.pk}"
    reason = f'not allowed to read channel "{bobs}"'
    assert_refused(stream_url(server, bobs, f"user:{alice.pk}", lastEventId="0"), reason, cookie)
