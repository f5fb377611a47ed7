"""notify.history: reading stored events back."""

from __future__ import annotations

import pytest

import notify
from notify import history
from notify.models import Event

pytestmark = pytest.mark.django_db


def test_start_reads_the_bounds_and_the_first_batch_in_one_query(django_assert_num_queries):
    events = [notify.publish("ab"[n % 2], {"n": n}) for n in range(8)]
    Event.objects.filter(id=events[0].id).delete()
    with django_assert_num_queries(1):
        start = history.start(["a"], events[1].id, limit=2, until=events[-1].id)
    assert (start.oldest, start.newest) == (events[1].id, events[-1].id)
    assert [notice.id for notice in start.rows] == [events[2].id, events[4].id]
    assert start.rows[0].frame == Event.objects.get(id=events[2].id).sse_frame()


def test_start_with_nothing_to_replay_reads_the_bounds_alone(django_assert_num_queries):
    events = [notify.publish("a", n) for n in range(3)]
    with django_assert_num_queries(2):
        start = history.start(["b"], events[0].id, limit=10, until=events[-1].id)
    assert start == history.Start(events[0].id, events[-1].id, [])


def test_start_on_an_empty_table():
    assert history.start(["a"], 0, limit=10, until=0) == history.Start(None, None, [])
