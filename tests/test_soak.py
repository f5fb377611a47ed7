"""The soak harness (``tests.soak``): a short run of it, and its verdict on known histories."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.processes import ROOT
from tests.soak.check import Received, judge

STORED = {1: "a", 2: "b", 4: "a", 5: "a", 6: "b"}  # id 3 was rolled back


def client(channels: str, first: int, ids: list[int]) -> Received:
    return Received(frozenset(channels), first, [(i, STORED.get(i, "a")) for i in ids])


def test_a_client_that_got_everything_once_in_order_is_clean():
    verdict = judge([client("a", 0, [1, 4, 5]), client("ab", 1, [2, 4, 5, 6])], STORED)
    assert verdict.clean
    assert verdict.line() == (
        "soak: 7 deliveries, 0 lost, 0 duplicated, 0 reordered, 0 foreign, 0 phantom"
    )


def test_what_came_before_the_first_cursor_is_not_owed():
    assert judge([client("a", 4, [5])], STORED).clean


@pytest.mark.parametrize(
    ("received", "kind"),
    [
        (client("a", 0, [1, 5]), "lost"),
        (client("a", 0, [1, 4, 4, 5]), "duplicated"),
        (client("a", 0, [1, 5, 4]), "reordered"),
        (client("a", 0, [1, 2, 4, 5]), "foreign"),
        (client("a", 0, [1, 3, 4, 5]), "phantom"),
    ],
)
def test_each_kind_of_failure_is_counted(received, kind):
    verdict = judge([received], STORED)
    assert not verdict.clean
    counts = {k: getattr(verdict, k) for k in verdict.examples}
    assert counts == {kind: 1}
    assert f"1 {kind}" in verdict.line()


def test_an_event_sent_on_the_wrong_channel_is_foreign():
    # Id 4 is stored on "a"; a stream that reports it as "b" misdelivered it.
    verdict = judge([Received(frozenset("ab"), 0, [(1, "a"), (2, "b"), (4, "b")])], STORED)
    assert verdict.foreign == 1


def test_a_short_soak_run_loses_nothing():
    """15 s of the harness: two daphne servers, three publishers, 200 clients (a third of
    them on the WebSocket transport, the others on SSE), Redis restarted and killed, a
    server killed and another stopped, a client of each transport that stops reading."""
    env = dict(os.environ)
    result = subprocess.run(
        [sys.executable, "-m", "tests.soak", "--duration", "15", "--settle", "60"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines[-1].endswith(" 0 lost, 0 duplicated, 0 reordered, 0 foreign, 0 phantom")
    deliveries = int(lines[-1].split()[1])
    assert deliveries > 100_000, lines[-1]
    # Each transport's verdict: "soak: websocket: 67 clients, N deliveries, 0 lost, ..."
    for transport in ("sse", "websocket"):
        verdict = next(line for line in lines if line.startswith(f"soak: {transport}: "))
        assert verdict.endswith(" 0 lost, 0 duplicated, 0 reordered, 0 foreign, 0 phantom")
        assert int(verdict.split()[4]) > 10_000, verdict
