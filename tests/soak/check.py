"""The verdict: each client's received events compared with what the database holds."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass
class Received:
    """What one client asked for and got, over all of its connections."""

    channels: frozenset[str]
    #: The id of the client's first ``notify.open``: it is owed every event after it.
    first_cursor: int | None = None
    #: (id, channel) of every event dispatched to the client, in the order it came.
    events: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class Verdict:
    deliveries: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    foreign: int = 0
    phantom: int = 0
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


def judge(clients: Iterable[Received], stored: Mapping[int, str]) -> Verdict:
    """``stored`` maps the id of every committed event to its channel. A client is owed each
    stored event of its channels after its first cursor; it must get each once, in id order,
    and nothing else (no other channel's event, no event that was never committed)."""
    by_channel: dict[str, list[int]] = {}
    for event_id, channel in sorted(stored.items()):
        by_channel.setdefault(channel, []).append(event_id)
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
        if client.first_cursor is None:
            # Never opened a stream: owed nothing, but the harness reports it as a failure.
            continue
        for channel in client.channels:
            for event_id in by_channel.get(channel, ()):
                if event_id > client.first_cursor and event_id not in seen:
                    verdict.lost += 1
                    verdict.note("lost", f"client {number}: id {event_id} of {channel!r}")
    return verdict
