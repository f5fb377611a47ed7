"""The stream over HTTP, served by ``notify.asgi.NotifyASGIHandler`` in a real daphne.

``StreamContract`` holds the contract of ``GET /notify/stream/`` (issue 2, "The stream"):
every test in it starts a server on ``APP`` and reads it with a real client. ``TestStream``
runs it against the wrapped application (tests/asgi.py); tests/test_views.py runs the same
class against Django's plain ASGI handler, where the fallback view serves the stream.

Two readers: ``SSEClient`` (conftest) sees what a browser's EventSource sees; ``RawStream``
reads the raw bytes with httpx ``iter_raw``, for what EventSource hides (exact bytes, which
blocks carry an ``id:`` line, comments, line endings).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from django.db import connection, transaction

import notify
from notify.broker import encode_notice
from notify.models import Event
from tests.conftest import REDIS_PREFIX, ROOT, Server, SSEClient, StartServer, payload

ON_POSTGRESQL = connection.vendor == "postgresql"


# -- reading streams ---------------------------------------------------------------------


def stream_url(server: Server, *channels: str, **params: str) -> str:
    query = [("channel", channel) for channel in channels] + list(params.items())
    return str(httpx.URL(f"{server.url}/notify/stream/", params=query))


@dataclass
class Block:
    """One block of the stream (the bytes up to and including its blank line)."""

    raw: bytes
    fields: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        values = [value for field, value in self.fields if field == name]
        assert len(values) <= 1, f"{name!r} given twice in {self.raw!r}"
        return values[0] if values else None

    @property
    def id(self) -> str | None:
        """The value of the block's ``id:`` line; None when it has none."""
        return self.get("id")

    @property
    def event(self) -> str | None:
        return self.get("event")

    @property
    def data(self) -> Any:
        return json.loads(self.get("data"))  # type: ignore[arg-type]

    @property
    def dispatches(self) -> bool:
        return any(field in ("event", "data") for field, _ in self.fields)


def parse_block(raw: bytes) -> Block:
    # Everything notify sends is ASCII: decoding as ASCII checks it.
    lines = raw.decode("ascii").split("\n")
    assert lines[-2:] == ["", ""], raw
    fields = []
    for line in lines[:-2]:
        if line.startswith(":"):
            fields.append(("", line[1:]))  # a comment
        else:
            name, colon, value = line.partition(": ")
            assert colon, f"a field line without ': ' in {raw!r}"
            fields.append((name, value))
    return Block(raw, fields)


class RawStream:
    """The raw bytes of a stream, read with httpx ``iter_raw`` (no decoding at all)."""

    def __init__(
        self, url: str, headers: dict[str, Any] | None = None, read_timeout: float = 10.0
    ) -> None:
        self.client = httpx.Client(timeout=httpx.Timeout(10.0, read=read_timeout))
        self.response = self.client.send(
            self.client.build_request("GET", url, headers=headers or {}), stream=True
        )
        self._chunks = self.response.iter_raw()
        self.received = b""
        self._pos = 0

    def __enter__(self) -> RawStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.response.close()
        self.client.close()

    def read_chunk(self) -> bytes:
        try:
            chunk = next(self._chunks)
        except StopIteration:
            raise EOFError("the stream ended") from None
        self.received += chunk
        return chunk

    def next_block(self) -> Block:
        while (end := self.received.find(b"\n\n", self._pos)) < 0:
            self.read_chunk()
        raw = self.received[self._pos : end + 2]
        self._pos = end + 2
        return parse_block(raw)

    def next_event(self) -> Block:
        """The next block that dispatches an event (not ``retry:`` alone, not a comment)."""
        while True:
            block = self.next_block()
            if block.dispatches:
                return block

    def until(self, event: str) -> list[Block]:
        """Events up to and including the first of type ``event``."""
        seen = []
        while True:
            block = self.next_event()
            seen.append(block)
            if block.event == event:
                return seen


def message_ids(blocks: list[Any]) -> list[int]:
    return [int(block.id) for block in blocks if block.event == "message"]


def publish_many(spec: list[str], **data: Any) -> list[Event]:
    """One event per channel name in ``spec``, in that order."""
    return [notify.publish(channel, {"n": n, **data}) for n, channel in enumerate(spec)]


# -- the contract ------------------------------------------------------------------------


class StreamContract:
    #: The ASGI application the servers run (subclasses choose).
    APP = "tests.asgi:application"

    @pytest.fixture
    def start(self, start_server):
        """``start(kind="daphne", **NOTIFY)``: a server on this class's application."""

        def start(kind: str = "daphne", **notify_settings: Any) -> Server:
            return start_server(kind=kind, app=self.APP, **notify_settings)

        return start

    @pytest.fixture
    def server(self, start) -> Server:
        return start()

    # -- response ------------------------------------------------------------------------

    def test_response_status_and_headers(self, server):
        with httpx.Client(timeout=10) as client:
            with client.stream(
                "GET", stream_url(server, "orders"), headers={"Accept-Encoding": "gzip, deflate"}
            ) as response:
                assert response.status_code == 200
                assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
                assert response.headers["Cache-Control"] == "no-store"
                assert response.headers["X-Accel-Buffering"] == "no"
                assert "Content-Encoding" not in response.headers
                assert "Content-Length" not in response.headers
                first = next(response.iter_raw())
        assert first.startswith(b"retry: 3000\n\n")

    def test_first_bytes_leave_at_once(self, server):
        with SSEClient(stream_url(server)) as warm:  # the process's hub starts on first use
            warm.next()
        with httpx.Client(timeout=10) as client:
            started = time.monotonic()
            with client.stream("GET", stream_url(server)) as response:
                first = next(response.iter_raw())
                elapsed = time.monotonic() - started
        assert first.startswith(b"retry: 3000\n\n")
        assert elapsed < 0.5

    def test_heartbeat_comment_when_idle(self, start):
        server = start(HEARTBEAT_SECONDS=1)
        with RawStream(stream_url(server)) as stream:
            assert stream.next_event().event == "notify.open"
            started = time.monotonic()
            block = stream.next_block()
            elapsed = time.monotonic() - started
            assert block.raw == b": heartbeat\n\n"
            assert 0.5 < elapsed < 3
            # A comment dispatches nothing: the next event is the next published one.
            event = notify.publish("broadcast", {"after": "heartbeat"})
            assert stream.next_event().id == str(event.id)

    def test_only_lf_line_endings_and_no_bom(self, start):
        server = start(HEARTBEAT_SECONDS=1)
        notify.publish("broadcast", {"text": "before\r\n"})
        with RawStream(stream_url(server)) as stream:
            stream.next_event()  # notify.open
            notify.publish("broadcast", {"text": "line\r\nbreaks\rand\u2028separators\n"})
            stream.next_event()
            while b": heartbeat" not in stream.received:
                stream.read_chunk()
            received = stream.received
        with RawStream(stream_url(server, lastEventId="0")) as stream:
            stream.until("notify.catchup-end")
            received += stream.received
        assert b"\r" not in received
        assert b"\xef\xbb\xbf" not in received
        assert not received.startswith(b"\xfe\xff") and not received.startswith(b"\xff\xfe")
        assert all(byte < 0x80 for byte in received)

    def test_post_is_405(self, server):
        response = httpx.post(stream_url(server), content=b"x", timeout=10)
        assert response.status_code == 405
        assert response.headers["Allow"] == "GET"
        assert response.headers["Content-Type"].startswith("text/plain")
        assert response.text.strip()
        for method in ("PUT", "DELETE", "PATCH", "HEAD"):
            response = httpx.request(method, stream_url(server), timeout=10)
            assert response.status_code == 405, method

    BAD_CHANNELS = [
        ([""], "channel is empty"),
        (["has space"], "contains a space"),
        (["semi;colon"], 'contains ";"'),
        (["caf\u00e9"], 'contains "\u00e9"'),
        (["nul\x00"], "U+0000"),
        (["a" * 201], "is 201 characters long; the limit is 200"),
        (["a", "b", "a"], 'channel "a" is given twice'),
        ([f"c{n}" for n in range(33)], "33 channels requested; the limit is 32"),
    ]

    def test_bad_channels_are_400_with_a_reason(self, server):
        for channels, reason in self.BAD_CHANNELS:
            response = httpx.get(stream_url(server, *channels), timeout=10)
            assert response.status_code == 400, channels
            assert response.headers["Content-Type"].startswith("text/plain")
            assert reason in response.text, (channels, response.text)
            # One line of plain text.
            assert response.text.endswith("\n") and "\n" not in response.text[:-1]
        assert "Traceback" not in server.output()

    def test_max_channels_setting(self, start):
        server = start(MAX_CHANNELS=2)
        response = httpx.get(stream_url(server, "a", "b", "c"), timeout=10)
        assert response.status_code == 400
        assert response.text == '3 channels requested; the limit is 2 (NOTIFY["MAX_CHANNELS"])\n'
        with SSEClient(stream_url(server, "a", "b")) as client:
            assert client.next().event == "notify.open"

    def test_channel_limits_are_inclusive(self, server):
        url = stream_url(server, "a" * 200, *[f"c{n}" for n in range(31)])
        with SSEClient(url) as client:
            assert client.response.status_code == 200
            assert client.next().event == "notify.open"
            event = notify.publish("a" * 200, "long name")
            assert payload(client.next())["channel"] == "a" * 200
            assert client.last_id == str(event.id)

    # -- live delivery -------------------------------------------------------------------

    def test_live_delivery(self, server):
        with SSEClient(stream_url(server, "orders")) as client:
            assert client.next().event == "notify.open"
            assert client.retry == 3000
            event = notify.publish("orders", {"total": 12.5, "items": [1, 2]}, event="created")
            got = client.next()
        assert got.event == "created"
        assert got.id == str(event.id)
        assert payload(got) == {
            "id": event.id,
            "channel": "orders",
            "event": "created",
            "created": event.created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "data": {"items": [1, 2], "total": 12.5},
        }

    def test_event_frame_bytes(self, server):
        data = {"text": "caf\u00e9 \u2028 \u2029 \u0085 \r\n \U0001f600", "n": None}
        # ASCII only, keys sorted, one line: U+2028 and friends cannot split the data line.
        data_json = (
            '{"n": null, "text": "caf\\u00e9 \\u2028 \\u2029 \\u0085 \\r\\n \\ud83d\\ude00"}'
        )
        with RawStream(stream_url(server, "a:b@c/d.e_f-g")) as stream:
            stream.next_event()  # notify.open
            event = notify.publish("a:b@c/d.e_f-g", data)
            live = stream.next_event()
        created = event.created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", created)
        expected = (
            f"id: {event.id}\n"
            "event: message\n"
            f'data: {{"id": {event.id}, "channel": "a:b@c/d.e_f-g", "event": "message", '
            f'"created": "{created}", "data": {data_json}}}\n'
            "\n"
        ).encode("ascii")
        assert live.raw == expected
        # Replayed from the database, the same bytes.
        with RawStream(
            stream_url(server, "a:b@c/d.e_f-g"), {"Last-Event-ID": str(event.id - 1)}
        ) as stream:
            replayed = stream.until("notify.catchup-end")
        assert replayed[1].raw == expected

    def test_several_channels_on_one_stream(self, server):
        with SSEClient(stream_url(server, "a", "b", "c.d")) as client:
            client.next()  # notify.open
            events = publish_many(["a", "x", "b", "broadcast", "c.d", "c", "a"])
            wanted = [e for e in events if e.channel in ("a", "b", "c.d")]
            got = client.take(len(wanted))
            # Nothing else was sent: the next event is the next one of these channels.
            last = notify.publish("b", "last")
            assert client.next().id == str(last.id)
        assert [e.id for e in got] == [str(e.id) for e in wanted]
        assert [payload(e)["channel"] for e in got] == ["a", "b", "c.d", "a"]

    def test_no_channel_means_broadcast(self, server):
        with SSEClient(stream_url(server)) as client:
            client.next()  # notify.open
            notify.publish("other", "not for this stream")
            event = notify.publish("broadcast", "for everyone")
            got = client.next()
        assert got.id == str(event.id)
        assert payload(got)["channel"] == "broadcast"
        assert payload(got)["data"] == "for everyone"

    def test_rolled_back_publish_sends_nothing(self, server):
        class Rollback(Exception):
            pass

        with SSEClient(stream_url(server)) as client:
            opened = client.next()
            with pytest.raises(Rollback), transaction.atomic():
                rolled_back = notify.publish("broadcast", {"rolled": "back"})
                raise Rollback
            committed = notify.publish("broadcast", {"committed": True})
            # (SQLite hands the rolled-back id out again; PostgreSQL leaves a gap.)
            assert rolled_back.id <= committed.id
            got = client.next()
            assert got.id == str(committed.id)
            assert payload(got)["data"] == {"committed": True}
            after = notify.publish("broadcast", {"after": True})
            assert client.next().id == str(after.id)
        with SSEClient(stream_url(server), last_event_id=opened.id) as client:
            replayed = client.until(lambda e: e.event == "notify.catchup-end")
        assert message_ids(replayed) == [committed.id, after.id]

    # -- cursors ---------------------------------------------------------------------------

    def test_no_cursor_opens_at_the_newest_id(self, server):
        events = publish_many(["broadcast", "elsewhere", "broadcast", "elsewhere"])
        newest = events[-1].id  # the newest of every channel: ids are global
        with RawStream(stream_url(server)) as stream:
            first = stream.next_event()
            assert first.event == "notify.open"
            assert first.id == str(newest)
            assert first.data == {"last_id": newest}
            event = notify.publish("broadcast", "live")
            assert stream.next_event().id == str(event.id)

    def test_no_cursor_on_empty_history_opens_at_zero(self, server):
        assert not Event.objects.exists()
        with RawStream(stream_url(server)) as stream:
            first = stream.next_event()
        assert (first.event, first.id, first.data) == ("notify.open", "0", {"last_id": 0})

    def test_empty_cursor_is_no_cursor(self, server):
        event = notify.publish("broadcast", 1)
        with RawStream(stream_url(server, lastEventId=""), {"Last-Event-ID": ""}) as stream:
            first = stream.next_event()
        assert (first.event, first.id) == ("notify.open", str(event.id))

    def test_cursor_from_last_event_id_header(self, server):
        events = publish_many(["broadcast"] * 5)
        with SSEClient(stream_url(server), last_event_id=str(events[1].id)) as client:
            got = client.until(lambda e: e.event == "notify.catchup-end")
        assert got[0].event == "notify.catchup-start"
        assert payload(got[0]) == {"after": events[1].id}
        assert message_ids(got) == [e.id for e in events[2:]]
        assert payload(got[-1]) == {"count": 3, "last_id": events[-1].id}

    def test_cursor_from_query_parameter(self, server):
        events = publish_many(["broadcast"] * 5)
        with SSEClient(stream_url(server, lastEventId=str(events[2].id))) as client:
            got = client.until(lambda e: e.event == "notify.catchup-end")
        assert payload(got[0]) == {"after": events[2].id}
        assert message_ids(got) == [e.id for e in events[3:]]
        assert payload(got[-1]) == {"count": 2, "last_id": events[-1].id}

    def test_header_cursor_wins_over_query_parameter(self, server):
        events = publish_many(["broadcast"] * 5)
        url = stream_url(server, lastEventId=str(events[0].id))
        with SSEClient(url, last_event_id=str(events[3].id)) as client:
            got = client.until(lambda e: e.event == "notify.catchup-end")
        assert payload(got[0]) == {"after": events[3].id}
        assert message_ids(got) == [events[4].id]

    def test_cursor_zero_replays_everything_retained(self, server):
        events = publish_many(["broadcast", "other", "broadcast", "broadcast"])
        oldest = Event.objects.order_by("id").first().id
        with RawStream(stream_url(server, lastEventId="0")) as stream:
            got = stream.until("notify.catchup-end")
        if oldest > 1:
            # Ids below the oldest were used before (by earlier tests): they are gone.
            reset = got.pop(0)
            assert reset.event == "notify.reset"
            assert reset.data == {"reason": "history-gone", "oldest_id": oldest}
            assert reset.id == str(oldest - 1)
            after = oldest - 1
        else:
            after = 0
        assert got[0].event == "notify.catchup-start"
        assert got[0].data == {"after": after}
        assert message_ids(got) == [e.id for e in events if e.channel == "broadcast"]
        assert got[-1].data == {"count": 3, "last_id": events[-1].id}

    def test_catchup_sends_the_streams_channels_in_id_order(self, server):
        spec = ["a", "c", "b", "b", "c", "a", "c", "c", "a", "b", "c"]
        events = publish_many(spec)
        cursor = events[2].id  # the first b
        with RawStream(stream_url(server, "b", "a"), {"Last-Event-ID": str(cursor)}) as stream:
            got = stream.until("notify.catchup-end")
            live = notify.publish("a", "live")
            after = stream.next_event()
        wanted = [e.id for e in events if e.id > cursor and e.channel in ("a", "b")]
        assert [b.event for b in got] == [
            "notify.catchup-start",
            *["message"] * len(wanted),
            "notify.catchup-end",
        ]
        assert got[0].data == {"after": cursor}
        assert message_ids(got) == wanted
        assert [b.data["channel"] for b in got[1:-1]] == ["b", "a", "a", "b"]
        assert got[-1].data == {"count": 4, "last_id": wanted[-1]}
        # The catch-up's control events carry the id the client has everything through.
        assert got[0].id == str(got[0].data["after"]) and got[-1].id == str(wanted[-1])
        assert all(b.id == str(b.data["id"]) for b in got[1:-1])
        assert (after.event, after.id) == ("message", str(live.id))

    def test_catchup_with_nothing_missed(self, server):
        events = publish_many(["a", "b"])
        with RawStream(stream_url(server, "a"), {"Last-Event-ID": str(events[0].id)}) as stream:
            got = stream.until("notify.catchup-end")
            live = notify.publish("a", "live")
            after = stream.next_event()
        assert [(b.event, b.id, b.data) for b in got] == [
            ("notify.catchup-start", str(events[0].id), {"after": events[0].id}),
            ("notify.catchup-end", str(events[0].id), {"count": 0, "last_id": events[0].id}),
        ]
        assert after.id == str(live.id)

    def test_no_gap_and_no_duplicate_at_the_seam(self, start):
        """Events published while the replay runs arrive once each, in order."""
        Event.objects.bulk_create(Event(channel="abc"[n % 3], data={"n": n}) for n in range(600))
        stored = list(Event.objects.filter(channel__in="ab").values_list("id", flat=True))
        cursor = stored[10]
        server = start(REPLAY_BATCH=4)
        published: list[Event] = []
        stop = threading.Event()

        def publisher() -> None:
            try:
                n = 0
                while not stop.is_set():
                    published.append(notify.publish("abc"[n % 3], {"live": n}))
                    n += 1
                    # Paced: a replay of 4 events per query must be able to catch up with
                    # the live events (unpaced on PostgreSQL, the publisher outran it).
                    time.sleep(0.002)
            finally:
                connection.close()

        thread = threading.Thread(target=publisher)
        with RawStream(stream_url(server, "a", "b"), {"Last-Event-ID": str(cursor)}) as stream:
            assert stream.next_event().event == "notify.catchup-start"
            thread.start()
            try:
                replayed = stream.until("notify.catchup-end")
                time.sleep(0.2)  # live events, published after the replay
            finally:
                stop.set()
                thread.join()
            wanted = [i for i in stored if i > cursor]
            wanted += [e.id for e in published if e.channel in "ab"]
            received = message_ids(replayed)
            while not received or received[-1] < wanted[-1]:
                block = stream.next_event()
                assert block.event == "message"
                received.append(int(block.id))
        end = replayed[-1].data
        assert received == wanted
        assert end == {"count": len(message_ids(replayed)), "last_id": message_ids(replayed)[-1]}
        # Both sides of the seam were exercised: the replay read events published after
        # the stream subscribed, and others arrived live after it.
        first_published = min(e.id for e in published if e.channel in "ab")
        assert first_published <= end["last_id"] < wanted[-1]

    def test_reset_when_history_is_gone(self, server):
        events = publish_many(
            ["broadcast", "other", "broadcast", "other", "broadcast", "broadcast"]
        )
        Event.objects.filter(id__lte=events[2].id).delete()
        oldest = events[3].id
        with RawStream(stream_url(server), {"Last-Event-ID": str(events[0].id)}) as stream:
            got = stream.until("notify.catchup-end")
        reset = got[0]
        assert reset.event == "notify.reset"
        assert reset.data == {"reason": "history-gone", "oldest_id": oldest}
        assert reset.id == str(oldest - 1)
        assert (got[1].event, got[1].id, got[1].data) == (
            "notify.catchup-start",
            str(oldest - 1),
            {"after": oldest - 1},
        )
        assert message_ids(got) == [events[4].id, events[5].id]
        assert got[-1].data == {"count": 2, "last_id": events[5].id}

    def test_no_reset_when_nothing_after_the_cursor_was_deleted(self, server):
        events = publish_many(["broadcast"] * 4)
        Event.objects.filter(id__lte=events[1].id).delete()
        with RawStream(stream_url(server), {"Last-Event-ID": str(events[1].id)}) as stream:
            got = stream.until("notify.catchup-end")
        assert got[0].event == "notify.catchup-start"
        assert message_ids(got) == [events[2].id, events[3].id]

    def assert_reset_then_live(
        self, stream: RawStream, reason: str, newest: int, oldest: int | None
    ):
        reset = stream.next_event()
        assert reset.event == "notify.reset"
        assert reset.data == {"reason": reason, "oldest_id": oldest}
        # The cursor the stream continues from: the newest id; then live events.
        assert reset.id == str(newest)
        event = notify.publish("broadcast", {"after": reason})
        block = stream.next_event()
        assert (block.event, block.id) == ("message", str(event.id))
        assert stream.response.status_code == 200

    INVALID_CURSORS = [
        "abc",
        "-1",
        "+5",
        "0x10",
        "1e3",
        "5.0",
        "1_000",
        "1" * 21,
        "0" * 21,
        "\u0661\u0662",  # Arabic-Indic digits: int() would take them
        "\uff15",  # a fullwidth 5
        "caf\u00e9",
    ]

    def test_reset_for_an_invalid_cursor_in_the_header(self, server):
        events = publish_many(["broadcast", "other"])
        for cursor in self.INVALID_CURSORS:
            # Header bytes are latin-1; send non-latin-1 text as UTF-8 bytes.
            header = cursor.encode("utf-8")
            with RawStream(stream_url(server), {"Last-Event-ID": header}) as stream:
                assert stream.response.status_code == 200, repr(cursor)
                self.assert_reset_then_live(stream, "invalid-cursor", events[-1].id, events[0].id)
            events.append(Event.objects.order_by("id").last())
        assert "Traceback" not in server.output()

    def test_reset_for_an_invalid_cursor_in_the_query(self, server):
        events = publish_many(["broadcast", "other"])
        for cursor in [*self.INVALID_CURSORS, " 5", "5 ", "5\n", "\t5", "5\x00"]:
            with RawStream(stream_url(server, lastEventId=cursor)) as stream:
                assert stream.response.status_code == 200, repr(cursor)
                self.assert_reset_then_live(stream, "invalid-cursor", events[-1].id, events[0].id)
            events.append(Event.objects.order_by("id").last())
        assert "Traceback" not in server.output()

    def test_reset_for_an_invalid_cursor_on_empty_history(self, server):
        with RawStream(stream_url(server, lastEventId="x")) as stream:
            self.assert_reset_then_live(stream, "invalid-cursor", 0, None)

    def test_twenty_digits_with_leading_zeros_is_a_cursor(self, server):
        events = publish_many(["broadcast"] * 3)
        cursor = str(events[1].id).zfill(20)
        with RawStream(stream_url(server), {"Last-Event-ID": cursor}) as stream:
            got = stream.until("notify.catchup-end")
        assert got[0].data == {"after": events[1].id}
        assert message_ids(got) == [events[2].id]

    def test_reset_for_an_unknown_cursor(self, server):
        events = publish_many(["broadcast", "other", "broadcast"])
        for cursor in [str(events[-1].id + 1), str(events[-1].id + 1000), "9" * 20, "1" + "0" * 19]:
            with RawStream(stream_url(server), {"Last-Event-ID": cursor}) as stream:
                assert stream.response.status_code == 200, cursor
                self.assert_reset_then_live(stream, "unknown-cursor", events[-1].id, events[0].id)
            events.append(Event.objects.order_by("id").last())
        with RawStream(stream_url(server, lastEventId="9" * 20)) as stream:
            self.assert_reset_then_live(stream, "unknown-cursor", events[-1].id, events[0].id)
        assert "Traceback" not in server.output()

    def test_reset_for_an_unknown_cursor_on_empty_history(self, server):
        with RawStream(stream_url(server, lastEventId="1")) as stream:
            self.assert_reset_then_live(stream, "unknown-cursor", 0, None)

    # -- other servers -------------------------------------------------------------------

    def test_runs_unchanged_under_uvicorn(self, start):
        server = start(kind="uvicorn")
        with SSEClient(stream_url(server, "a", "b")) as client:
            opened = client.next()
            assert opened.event == "notify.open"
            assert client.response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
            events = publish_many(["a", "c", "b"])
            got = client.take(2)
            assert [e.id for e in got] == [str(events[0].id), str(events[2].id)]
        with SSEClient(stream_url(server, "a", "b"), last_event_id=opened.id) as client:
            got = client.until(lambda e: e.event == "notify.catchup-end")
            assert message_ids(got) == [events[0].id, events[2].id]
            live = notify.publish("b", "live")
            assert client.next().id == str(live.id)


class TestStream(StreamContract):
    """The contract, served by NotifyASGIHandler."""

    APP = "tests.asgi:application"


# -- the handler only ----------------------------------------------------------------------


def test_other_requests_reach_the_wrapped_application(server):
    response = httpx.get(f"{server.url}/admin/login/", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    # The stream URL without its slash is not the stream: Django redirects it.
    response = httpx.get(f"{server.url}/notify/stream", timeout=10)
    assert response.status_code == 301
    assert response.headers["Location"] == "/notify/stream/"


def test_the_handler_does_not_warn_about_threads(server):
    with SSEClient(stream_url(server)) as client:
        client.next()
    assert "holds a thread per open stream" not in server.output()


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def open_files(pid: int) -> list[str]:
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass
    return found


def database_connections(pid: int) -> int:
    """Connections to the test database: PostgreSQL sessions on it, or the server's open
    SQLite files (a SQLite connection holds the database file open)."""
    if ON_POSTGRESQL:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return cursor.fetchone()[0]
    name = Path(connection.settings_dict["NAME"]).name
    return sum(1 for path in open_files(pid) if Path(path).name.startswith(name))


def wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_idle_streams_hold_no_thread_and_no_database_connection(server):
    url = stream_url(server)
    with SSEClient(url) as warm:  # start the hub and the database thread pool
        warm.next()
        notify.publish("broadcast", "warm-up")
        warm.next()
    time.sleep(0.3)
    threads_before = thread_count(server.pid)
    connections_before = database_connections(server.pid)
    sockets_before = sum(1 for path in open_files(server.pid) if path.startswith("socket:"))
    clients: list[SSEClient] = []
    try:
        for _ in range(50):
            client = SSEClient(url)
            clients.append(client)
            assert client.next().event == "notify.open"
        time.sleep(0.3)
        threads_open = thread_count(server.pid)
        connections_open = database_connections(server.pid)
        sockets_open = sum(1 for path in open_files(server.pid) if path.startswith("socket:"))
        # Every stream is alive and served.
        event = notify.publish("broadcast", "to all")
        for client in clients:
            assert client.next().id == str(event.id)
    finally:
        for client in clients:
            client.close()
    assert sockets_open >= sockets_before + 50
    assert threads_open - threads_before < 5, (threads_before, threads_open)
    assert connections_open <= connections_before, (connections_before, connections_open)
    # The server notices the clients leaving and keeps serving.
    assert wait_until(
        lambda: sum(1 for p in open_files(server.pid) if p.startswith("socket:")) <= sockets_before
    )
    assert thread_count(server.pid) - threads_before < 5
    with SSEClient(url) as client:
        assert client.next().event == "notify.open"
        event = notify.publish("broadcast", "still serving")
        assert client.next().id == str(event.id)
    assert server.process.poll() is None
    assert "Traceback" not in server.output()


# -- a slow client ----------------------------------------------------------------------------
#
# uvicorn's ``await send()`` waits while the client's socket is full; daphne's never waits,
# so notify.backpressure registers for Twisted's flow control instead. Either way a client
# that stops reading is closed as too slow, and the server buffers a bounded amount for it.


class StalledClient:
    """A stream read over a raw socket with a tiny receive buffer, that stops reading."""

    def __init__(self, server: Server, path: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", server.port))
        # HTTP/1.0: the body is the raw stream until the server closes the connection.
        self.sock.sendall(
            f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        self.received = b""
        self.reset = False
        self.sock.settimeout(10)
        while b"\r\n\r\n" not in self.received:
            self.received += self.sock.recv(65536)

    def read_to_end(self) -> bytes:
        """Everything until the server closes the connection. daphne aborts the connection
        of a stalled client (a reset): what was received before it is kept."""
        try:
            while chunk := self.sock.recv(1 << 20):
                self.received += chunk
        except ConnectionResetError:
            self.reset = True
        self.sock.close()
        head, _, body = self.received.partition(b"\r\n\r\n")
        # daphne answers in the request's version, uvicorn in HTTP/1.1.
        assert re.match(rb"HTTP/1\.[01] 200 ", head), head[:100]
        return body


def rss(pid: int) -> int:
    """The resident memory of process ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


# daphne at -v 2 sends Twisted's own log to the output too (at -v 1 it is discarded): an
# error such as a request finished with its producer still registered shows there, as
# "CRITICAL" and the error, without a traceback.
SERVER_ARGS = {"daphne": ["-v", "2"], "uvicorn": []}


def assert_clean_log(server: Server) -> None:
    output = server.output()
    if server.kind == "uvicorn":
        # How uvicorn reports a response cut short: the hub cancelled the write of a
        # too-slow stream, and uvicorn then closes the connection.
        output = output.replace("ERROR:    ASGI callable returned without completing response.", "")
    assert not re.search(r"Traceback|\bCRITICAL\b|\bERROR\b", output), output[-5000:]


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
def test_slow_client_is_closed_and_resumes_from_the_database(start_server, kind):
    server = start_server(kind=kind, server_args=SERVER_ARGS[kind], MAX_BUFFER=5)
    path = "/notify/stream/?channel=big"
    stalled = StalledClient(server, path)
    blob = "x" * 60_000
    # Enough events to fill every buffer between the server and the stalled client (the
    # server's socket buffer grows up to the kernel's tcp_wmem maximum), then some more;
    # and 24 MiB at least, which a server that buffers without bound shows in its memory.
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    count = max((wmem_max + (2 << 20)) // len(blob) + 20, (24 << 20) // len(blob))
    published: list[Event] = []
    with SSEClient(f"{server.url}{path}") as reader:
        assert reader.next().event == "notify.open"
        rss_before = rss(server.pid)
        # The stalled client reads nothing more. The reader takes each event as it comes:
        # it never has more than one waiting, so it is never too slow.
        for n in range(count):
            published.append(notify.publish("big", {"n": n, "blob": blob}))
            assert reader.next().id == str(published[-1].id)
        # The server kept a bounded amount for the stalled client, not what was published
        # (under daphne without notify.backpressure, it grew by nearly all of it).
        rss_growth = rss(server.pid) - rss_before
        assert rss_growth < count * len(blob) / 4, (rss_growth, count * len(blob))
        body = stalled.read_to_end()
    # The stalled stream ended without the events it could not take.
    blocks = [parse_block(raw + b"\n\n") for raw in body.split(b"\n\n")[:-1]]
    got = [int(b.id) for b in blocks if b.event == "message"]
    assert blocks[0].raw == b"retry: 3000\n\n"
    assert blocks[1].event == "notify.open"
    assert got == [e.id for e in published[: len(got)]]
    assert len(got) < len(published) - 5
    # daphne aborted the connection, dropping what Twisted still held for this client.
    assert stalled.reset == (kind == "daphne")
    # Reconnecting with its last id replays what it missed.
    last_id = [b.id for b in blocks if b.id is not None][-1]
    with SSEClient(f"{server.url}{path}", last_event_id=last_id) as client:
        replayed = client.until(lambda e: e.event == "notify.catchup-end")
    assert message_ids(replayed) == [e.id for e in published[len(got) :]]
    # The too-slow close, the reader leaving and the replay left the server clean.
    assert server.process.poll() is None
    assert_clean_log(server)


def test_stream_that_falls_behind_between_writes_ends_its_response_cleanly(start_server, redis_url):
    """Too slow while not paused (a burst reached the hub faster than the stream could take
    it): daphne's response ends normally, its producer unregistered first."""
    server = start_server(server_args=SERVER_ARGS["daphne"], MAX_BUFFER=5)
    with RawStream(stream_url(server, "burst")) as stream:
        opened = stream.next_event()
        assert opened.event == "notify.open"
        events = Event.objects.bulk_create(
            Event(channel="burst", data={"n": n}) for n in range(200)
        )
        # The notices in one pipeline, so that the hub reads many at once from its socket.
        with redis.Redis.from_url(redis_url) as client:
            pipeline = client.pipeline(transaction=False)
            for event in events:
                notice = encode_notice(event.id, event.channel, event.sse_frame())
                pipeline.publish(f"{REDIS_PREFIX}:events", notice)
            pipeline.execute()
        received = []
        # The end of the response, complete (an aborted one makes httpx raise).
        with pytest.raises(EOFError):
            while True:
                received.append(stream.next_event())
    got = message_ids(received)
    assert got == [e.id for e in events[: len(got)]]
    assert len(got) < len(events)
    with SSEClient(
        stream_url(server, "burst"), last_event_id=str(got[-1] if got else opened.id)
    ) as client:
        replayed = client.until(lambda e: e.event == "notify.catchup-end")
    assert message_ids(replayed) == [e.id for e in events[len(got) :]]
    assert_clean_log(server)


_FREEZE_PROBE = """
import gc, os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
from django.core.asgi import get_asgi_application
django_application = get_asgi_application()
from notify.asgi import NotifyASGIHandler
before = gc.get_freeze_count()
NotifyASGIHandler(django_application, freeze_gc={freeze})
NotifyASGIHandler(django_application, freeze_gc={freeze})
print(before, gc.get_freeze_count())
"""


@pytest.mark.parametrize("freeze", [True, False])
def test_the_handler_freezes_the_startup_heap_once_unless_told_not_to(freeze):
    # In a process of its own: freezing this test process would change every later test's.
    probe = _FREEZE_PROBE.format(freeze=freeze)
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    before, after = map(int, result.stdout.split())
    assert before == 0
    # Django's loaded modules, settings and models: tens of thousands of objects.
    assert (after > 10_000) if freeze else (after == 0)


def test_no_cursor_opens_where_the_hub_is_with_redis_and_misses_nothing_after(
    start_server: Any,
):
    """With its Redis subscription up and read up to, the hub knows the newest id: a stream
    without a cursor opens there without a query. An event stored with no notice, which the
    hub has not reached, is therefore after the stream's start, and comes once the hub
    reads it (here: a later notice reveals the gap)."""
    # No reconcile read during the test: the gap must be what brings the silent event.
    server = start_server(RECONCILE_SECONDS=600)
    with SSEClient(stream_url(server, "a")) as first:
        assert first.next().event == "notify.open"
        seen = notify.publish("a", "seen")
        assert first.next().id == str(seen.id)  # the hub is subscribed and current
        silent = Event.objects.create(channel="a", data="no notice")
        with SSEClient(stream_url(server, "a")) as second:
            opened = second.next()
            assert (opened.event, opened.id) == ("notify.open", str(seen.id))
            later = notify.publish("a", "later")
            assert [second.next().id for _ in range(2)] == [str(silent.id), str(later.id)]
        assert [first.next().id for _ in range(2)] == [str(silent.id), str(later.id)]


@pytest.mark.parametrize(
    ("kind", "server_args", "env", "path"),
    [
        # The site under /app by setting: clients ask for what reverse() gives.
        ("daphne", (), {"NOTIFY_TEST_FORCE_SCRIPT_NAME": "/app"}, "/app/notify/stream/"),
        ("uvicorn", (), {"NOTIFY_TEST_FORCE_SCRIPT_NAME": "/app"}, "/app/notify/stream/"),
        # A proxy strips /app and the server is told (the ASGI root_path).
        ("daphne", ("--root-path", "/app"), {}, "/notify/stream/"),
        ("uvicorn", ("--root-path", "/app"), {}, "/notify/stream/"),
    ],
    ids=[
        "force-script-name-daphne",
        "force-script-name-uvicorn",
        "root-path-daphne",
        "root-path-uvicorn",
    ],
)
def test_the_handler_serves_the_stream_under_a_script_prefix(
    start_server: StartServer,
    kind: str,
    server_args: tuple[str, ...],
    env: dict[str, str],
    path: str,
):
    """Under every way Django takes the script prefix, the stream's URL is answered by the
    handler (limits, flow control), never by the fallback view behind it."""
    server = start_server(kind=kind, server_args=server_args, env=env, MAX_STREAMS_PER_IP=2)
    url = f"{server.url}{path}?channel=orders"
    opened, codes = [], []
    with httpx.Client(timeout=10) as client:
        try:
            for _ in range(4):
                response = client.send(client.build_request("GET", url), stream=True)
                codes.append(response.status_code)
                opened.append(response)
            assert codes == [200, 200, 429, 429]
        finally:
            for response in opened:
                response.close()
    assert "served through Django's request handler" not in server.output()
