"""The soak harness (``tests.soak``): a short run of it, and its verdict on known histories."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.processes import ROOT
from tests.soak.check import Connection, Leak, Received, Revocation, judge

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


# User 7's channel. Ids 10-16 are stored on it, 13 is the revocation event of a logout at
# loop time 100.0 that ended session "s1" ("s2" is the user's other browser).
PRIVATE = {**{i: "user:7" for i in (10, 11, 12, 14, 15, 16)}, 13: "notify.revoke"}
LOGOUT = Revocation("logout", "7", 13, 100.0, 100.1, frozenset({"s1"}))
REVOKE = Revocation("revoke", "7", 13, 100.0, 100.1)


def logged_in(*connections: tuple[str, float | None, list[int]]) -> Received:
    """User 7's client, whose connections are (session, streaming since, ids received)."""
    received = Received(frozenset({"user:7"}), 9, user="7")
    for session, since, ids in connections:
        start = len(received.events)
        received.events += [(i, "user:7") for i in ids]
        received.connections.append(Connection(session, 8000, start, len(received.events), since))
    return received


@pytest.mark.parametrize(
    ("revocation", "session"), [(LOGOUT, "s1"), (REVOKE, "s1"), (REVOKE, "s2")]
)
def test_a_stream_streaming_before_a_revocation_gets_nothing_after_it(revocation, session):
    # Streaming since 99.0, before the revocation began: 14 came after its event, 13.
    verdict = judge([logged_in((session, 99.0, [10, 11, 12, 14]))], PRIVATE, [revocation])
    assert verdict.foreign == 1
    assert verdict.leaks == {revocation: Leak(connections=1, events=1, private=1)}
    assert "id 14 of 'user:7'" in verdict.examples["foreign"][0]
    assert verdict.revoked_connections == 1


def test_a_logout_ends_the_streams_of_its_session_only():
    # The user's other browser ("s2") is still logged in: its stream goes on.
    verdict = judge([logged_in(("s2", 99.0, [10, 11, 12, 14, 15, 16]))], PRIVATE, [LOGOUT])
    assert verdict.clean
    assert verdict.revoked_connections == 0


def test_what_came_before_the_revocation_event_is_fine_and_the_next_stream_gets_the_rest():
    # Ids up to 13 may still come on the revoked stream; its client resumes on a stream
    # authorized after the revocation, which is owed (and may get) everything after it.
    client = logged_in(("s2", 99.0, [10, 11, 12]), ("s2", 100.5, [14, 15, 16]))
    verdict = judge([client], PRIVATE, [LOGOUT, REVOKE])
    assert verdict.clean
    assert verdict.revoked_connections == 1


def test_a_connection_with_a_session_a_logout_ended_gets_nothing_after_it_ever():
    # Opened while the logout ran (streaming only after it began), with the logged-out
    # session: it must have been refused, or closed at the revocation.
    verdict = judge([logged_in(("s1", 100.2, [10, 11, 12, 14, 15, 16]))], PRIVATE, [LOGOUT])
    assert verdict.foreign == 3
    assert "which ended that session" in verdict.examples["foreign"][0]
    # A plain revoke ends no session: such a stream is authorized again.
    assert judge([logged_in(("s1", 100.2, [10, 11, 12, 14, 15, 16]))], PRIVATE, [REVOKE]).clean


def test_a_revocation_applies_to_its_own_user_only():
    other = Revocation("logout", "8", 11, 90.0, 90.1, frozenset({"s9"}))
    assert judge([logged_in(("s1", 80.0, [10, 11, 12, 14, 15, 16]))], PRIVATE, [other]).clean


def test_the_earliest_revocation_that_applies_is_the_cutoff():
    later = Revocation("revoke", "7", 15, 101.0, 101.1)
    verdict = judge([logged_in(("s2", 99.0, [10, 11, 12, 14, 15, 16]))], PRIVATE, [later, REVOKE])
    assert verdict.foreign == 3
    assert verdict.leaks == {REVOKE: Leak(connections=1, events=3, private=3)}


def test_public_events_after_a_revocation_count_too():
    # The revoked stream must have ended: an event of a public channel on it shows that it
    # went on.
    stored = {**PRIVATE, 14: "public:a"}
    client = Received(frozenset({"user:7", "public:a"}), 9, user="7")
    client.events = [(10, "user:7"), (14, "public:a")]
    client.connections = [Connection("s2", 8000, 0, 2, 99.0)]
    verdict = judge([client], stored, [REVOKE])
    assert verdict.foreign == 1
    assert verdict.leaks == {REVOKE: Leak(connections=1, events=1, private=0)}


def test_a_short_soak_run_loses_nothing():
    """15 s of the harness: two daphne servers, three publishers, 200 clients (a third of
    them on the WebSocket transport, the others on SSE; 48 logged in as 8 users), Redis
    restarted and killed, a server killed and another stopped, a client of each transport
    that stops reading, and the users' streams revoked and their sessions logged out."""
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
        # "soak: sse: 32 logged-in clients: N connections revoked (...), ..."
        revoked = next(line for line in lines if f"{transport}: " in line and "revoked" in line)
        assert int(revoked.split(": ")[2].split()[0]) > 0, revoked
    # "soak: revocations of 8 users: N logouts (...), ...; M stored a revocation event"
    revocations = next(line for line in lines if line.startswith("soak: revocations of "))
    assert int(revocations.split(": ")[2].split()[0]) > 0, revocations
