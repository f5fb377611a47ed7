"""The verdict: each client's received events compared with what the database holds, and
with the revocations of the run."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# The channel prefix that only one user may read (the default policy's ``user:<pk>``).
PRIVATE_PREFIX = "user:"


@dataclass
class Connection:
    """One connection of a logged-in client: the session it carried, and which of the
    client's events came on it (``Received.events[start:end]``)."""

    session: str
    port: int
    start: int
    #: None while it is open (to the end of the events).
    end: int | None = None
    #: Loop time at which its first control message (``notify.open``, ``catchup-start`` or
    #: ``reset``) came: the server had authorized the stream and subscribed it by then.
    #: None: it never streamed (refused, or cut before).
    streaming_since: float | None = None


@dataclass(frozen=True)
class Revocation:
    """One revocation of a user's streams during the run: a logout, a ``notify.revoke``,
    or a change of the user's password."""

    kind: str
    user: str
    #: The id of the revocation event it stored in the event log (``notify.revoke``). A
    #: revocation that stored none is judged against the newest id after it returned.
    event_id: int
    #: Loop time at which it began, and at which it had returned.
    started: float
    finished: float
    #: The sessions it ended: a logout's own; every session of the user for a password
    #: change; none for ``notify.revoke``.
    ended_sessions: frozenset[str] = frozenset()


@dataclass
class Received:
    """What one client asked for and got, over all of its connections."""

    channels: frozenset[str]
    #: The id of the client's first ``notify.open``: it is owed every event after it.
    first_cursor: int | None = None
    #: (id, channel) of every event dispatched to the client, in the order it came.
    events: list[tuple[int, str]] = field(default_factory=list)
    #: The pk of the user the client is logged in as (None: an anonymous visitor).
    user: str | None = None
    #: A logged-in client's connections, in order.
    connections: list[Connection] = field(default_factory=list)


@dataclass
class Leak:
    """What the connections that one revocation ended got after it."""

    connections: int = 0
    events: int = 0
    #: Events of a user's own channel (``user:<pk>``), of those.
    private: int = 0


@dataclass
class Verdict:
    deliveries: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    foreign: int = 0
    phantom: int = 0
    #: Connections that a revocation had to end or refuse (see ``cutoff``).
    revoked_connections: int = 0
    #: The revocations whose connections got events after them (counted as foreign).
    leaks: dict[Revocation, Leak] = field(default_factory=dict)
    #: A few examples per kind, for the report.
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.reordered or self.foreign or self.phantom)

    def counts(self) -> str:
        return (
            f"{self.deliveries} deliveries, {self.lost} lost, {self.duplicated} duplicated, "
            f"{self.reordered} reordered, {self.foreign} foreign, {self.phantom} phantom"
        )

    def line(self) -> str:
        return f"soak: {self.counts()}"

    def note(self, kind: str, text: str) -> None:
        examples = self.examples.setdefault(kind, [])
        if len(examples) < 5:
            examples.append(text)


def cutoff(connection: Connection, revocations: Sequence[Revocation]) -> Revocation | None:
    """The first revocation after whose event ``connection`` may receive nothing more, of
    ``revocations`` (its user's). Two apply, both whatever the timing:

    - one of the user (not a logout, which revokes its session only) that began after the
      stream was streaming: its authorization began before the revocation was stored, and
      a hub acts on revocations in id order;
    - one that ended the session the connection carried (a logout, a password change): the
      session stops authenticating before the revocation is stored, so the stream was
      either authorized before the revocation (as above), or refused."""
    applies = [
        revocation
        for revocation in revocations
        if connection.session in revocation.ended_sessions
        or (
            revocation.kind != "logout"
            and connection.streaming_since is not None
            and connection.streaming_since < revocation.started
        )
    ]
    return min(applies, key=lambda revocation: revocation.event_id, default=None)


def judge(
    clients: Iterable[Received],
    stored: Mapping[int, str],
    revocations: Iterable[Revocation] = (),
) -> Verdict:
    """``stored`` maps the id of every committed event to its channel. A client is owed each
    stored event of its channels after its first cursor; it must get each once, in id order,
    and nothing else: no other channel's event, no event that was never committed, and
    nothing published after a revocation on a connection that revocation ended (``cutoff``).
    """
    by_channel: dict[str, list[int]] = {}
    for event_id, channel in sorted(stored.items()):
        by_channel.setdefault(channel, []).append(event_id)
    by_user: dict[str, list[Revocation]] = {}
    for revocation in revocations:
        by_user.setdefault(revocation.user, []).append(revocation)
    verdict = Verdict()
    for number, client in enumerate(clients):
        verdict.deliveries += len(client.events)
        seen: set[int] = set()
        previous = 0
        for event_id, channel in client.events:
            if event_id in seen:
                verdict.duplicated += 1
                verdict.note("duplicated", f"client {number}: id {event_id}")
                continue
            seen.add(event_id)
            if event_id < previous:
                verdict.reordered += 1
                verdict.note("reordered", f"client {number}: id {event_id} after {previous}")
            previous = max(previous, event_id)
            if event_id not in stored:
                verdict.phantom += 1
                verdict.note("phantom", f"client {number}: id {event_id} was never committed")
            elif channel not in client.channels or stored[event_id] != channel:
                verdict.foreign += 1
                verdict.note("foreign", f"client {number}: id {event_id} of {stored[event_id]!r}")
        if client.user is not None:
            judge_revocations(number, client, by_user.get(client.user, []), stored, verdict)
        if client.first_cursor is None:
            # Never opened a stream: owed nothing, but the harness reports it as a failure.
            continue
        for channel in client.channels:
            for event_id in by_channel.get(channel, ()):
                if event_id > client.first_cursor and event_id not in seen:
                    verdict.lost += 1
                    verdict.note("lost", f"client {number}: id {event_id} of {channel!r}")
    return verdict


def judge_revocations(
    number: int,
    client: Received,
    revocations: Sequence[Revocation],
    stored: Mapping[int, str],
    verdict: Verdict,
) -> None:
    """Counts as foreign each event a revoked connection of ``client`` got from after its
    revocation (one that the channel check did not count already)."""
    for connection in client.connections:
        revocation = cutoff(connection, revocations)
        if revocation is None:
            continue
        verdict.revoked_connections += 1
        leaked = [
            (event_id, channel)
            for event_id, channel in client.events[connection.start : connection.end]
            # Misdelivered events are foreign already.
            if event_id > revocation.event_id
            and stored.get(event_id) == channel
            and channel in client.channels
        ]
        if not leaked:
            continue
        verdict.foreign += len(leaked)
        leak = verdict.leaks.setdefault(revocation, Leak())
        leak.connections += 1
        leak.events += len(leaked)
        leak.private += sum(1 for _, channel in leaked if channel.startswith(PRIVATE_PREFIX))
        for event_id, channel in leaked:
            what = describe(connection, revocation, event_id, channel)
            verdict.note("foreign", f"client {number} (user {client.user}): {what}")


def describe(connection: Connection, revocation: Revocation, event_id: int, channel: str) -> str:
    """An event that a revoked connection got, for the report."""
    since = connection.streaming_since
    how = "never streaming" if since is None else f"streaming since {since:.2f}"
    ended = ", which ended that session" if connection.session in revocation.ended_sessions else ""
    return (
        f"id {event_id} of {channel!r} on a connection to port {connection.port} (session "
        f"{connection.session[:8]}…, {how}) after the {revocation.kind} of "
        f"{revocation.started:.2f} to {revocation.finished:.2f}, revocation "
        f"{revocation.event_id}{ended}"
    )
