"""notify.js in a real Chromium against daphne: both transports, the cursor, the SSE parser,
recovery behind a failing proxy, and the client's controls."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, Route

import notify
from notify.models import Event
from tests.conftest import Server, StartServer
from tests.js_pages import NOTIFY_STATIC, render_page
from tests.policies import POLICY
from tests.proxy import Proxy

STREAM = "/notify/stream/"


def record_warnings(page: Page) -> list[str]:
    """Console warnings the page logs from now on (the page fixture fails on errors only)."""
    warnings: list[str] = []
    page.on("console", lambda message: message.type == "warning" and warnings.append(message.text))
    return warnings


def open_page(page: Page, base_url: str) -> None:
    page.goto(f"{base_url}/tests/notify-js/")
    page.wait_for_selector("body[data-ready=true]", state="attached")


def start_client(page: Page, url: str = STREAM, **options: Any) -> str:
    """A NotifyClient as window.client, recording into window.log; returns its status."""
    return page.evaluate("([url, options]) => startClient(url, options)", [url, options])


def log(page: Page, kind: str | None = None) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = page.evaluate("() => window.log")
    return [e for e in entries if kind is None or e["kind"] == kind]


def wait_for(page: Page, expression: str, timeout: float = 10_000) -> None:
    """Wait until ``expression`` (JS, with ``log`` bound to window.log) is true."""
    page.wait_for_function(
        f"() => {{ const log = window.log; return {expression}; }}", timeout=timeout
    )


def wait_for_events(page: Page, count: int, timeout: float = 10_000) -> list[dict[str, Any]]:
    wait_for(page, f"log.filter(e => e.kind === 'event').length >= {count}", timeout)
    return log(page, "event")


def wait_for_status(page: Page, state: str, timeout: float = 10_000) -> None:
    wait_for(page, f"window.client.status === {state!r}", timeout)


def statuses(page: Page) -> list[str]:
    return [e["state"] for e in log(page, "status")]


def test_eventsource_delivers_live_events(server: Server, page: Page) -> None:
    warnings = record_warnings(page)
    open_page(page, server.url)
    # The page found the stream's URL where {% notify_script %} put it.
    assert page.evaluate("() => window.streamUrl") == STREAM
    start_client(page, channels=["orders", "user:1"])
    wait_for(page, "log.some(e => e.kind === 'control' && e.name === 'notify.open')")
    first = notify.publish("orders", {"status": "paid", "html": "<b>x</b>"})
    second = notify.publish("user:1", [1, "ü"], event="message")
    notify.publish("elsewhere", {"not": "mine"})
    events = wait_for_events(page, 2)
    assert [e["envelope"]["id"] for e in events] == [first.id, second.id]
    assert events[0]["envelope"]["channel"] == "orders"
    assert events[0]["envelope"]["data"] == {"status": "paid", "html": "<b>x</b>"}
    assert events[1]["envelope"]["data"] == [1, "ü"]
    assert all(e["type"] == "message" and e["replayed"] is False for e in events)
    assert [e["id"] for e in events] == [str(first.id), str(second.id)]
    assert statuses(page) == ["connecting", "open"]
    key = "notify:last-event-id:/notify/stream/?channel=orders&channel=user%3A1"
    assert page.evaluate("(key) => localStorage.getItem(key)", key) == str(second.id)
    assert page.evaluate("() => window.client.lastEventId") == str(second.id)
    page.evaluate("() => window.client.disconnect()")
    assert warnings == []


def test_named_event_types_reach_handlers(server: Server, page: Page) -> None:
    open_page(page, server.url)
    start_client(page, channels=["orders"], events=["order.shipped"])
    page.evaluate(
        """() => {
            window.paid = [];
            client.on("order.paid", (envelope, meta) => paid.push([envelope.id, meta.type]));
        }"""
    )
    wait_for_status(page, "open")
    paid = notify.publish("orders", {}, event="order.paid")
    shipped = notify.publish("orders", {}, event="order.shipped")
    events = wait_for_events(page, 2)
    assert [(e["envelope"]["id"], e["type"]) for e in events] == [
        (paid.id, "order.paid"),
        (shipped.id, "order.shipped"),
    ]
    assert page.evaluate("() => window.paid") == [[paid.id, "order.paid"]]


def test_reload_resumes_from_the_stored_cursor(server: Server, page: Page) -> None:
    open_page(page, server.url)
    start_client(page, channels=["orders"])
    wait_for_status(page, "open")
    seen = notify.publish("orders", {"n": 0})
    wait_for_events(page, 1)
    # Leave the page while the stream is open (and come back to a fresh one).
    page.goto("about:blank")
    missed = [notify.publish("orders", {"n": n}).id for n in range(1, 4)]
    open_page(page, server.url)
    start_client(page, channels=["orders"])
    events = wait_for_events(page, 3)
    live = notify.publish("orders", {"n": 4})
    events = wait_for_events(page, 4)
    assert [e["envelope"]["id"] for e in events] == [*missed, live.id]
    assert [e["replayed"] for e in events] == [True, True, True, False]
    assert [(e["phase"], e["info"]) for e in log(page, "catchup")] == [
        ("start", {"after": seen.id}),
        ("end", {"count": 3, "last_id": missed[-1]}),
    ]
    assert statuses(page) == ["connecting", "catching-up", "open"]


# --- the SSE parser ------------------------------------------------------------------------

PARSE = """(chunks) => {
  const events = [];
  const retries = [];
  const parser = new notify.SSEParser({
    onEvent: (event) => events.push([event.type, event.data, event.lastEventId]),
    onRetry: (ms) => retries.push(ms),
  });
  for (const chunk of chunks) parser.feed(new Uint8Array(chunk));
  parser.end();
  return { events, retries };
}"""


@pytest.fixture
def offline_page(page: Page) -> Page:
    """The blank page and notify.js, served by Playwright itself: no server needed."""

    def fulfil(route: Route) -> None:
        path = urlsplit(route.request.url).path
        if path == "/static/notify/notify.js":
            route.fulfill(
                path=NOTIFY_STATIC / "notify" / "notify.js", content_type="text/javascript"
            )
        else:
            route.fulfill(body=render_page(), content_type="text/html")

    page.route("http://notify.test/**", fulfil)
    open_page(page, "http://notify.test")
    return page


def parse(page: Page, *chunks: bytes) -> dict[str, list[Any]]:
    result: dict[str, list[Any]] = page.evaluate(PARSE, [list(chunk) for chunk in chunks])
    return result


def every_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


PARSER_CASES = {
    "lf": ([b"data: a\n\ndata: b\n\n"], [["message", "a", ""], ["message", "b", ""]]),
    "cr": ([b"data: a\r\rdata: b\r\r"], [["message", "a", ""], ["message", "b", ""]]),
    "crlf": ([b"data: a\r\n\r\ndata: b\r\n\r\n"], [["message", "a", ""], ["message", "b", ""]]),
    "mixed": ([b"data: a\rdata: b\ndata: c\r\n\n"], [["message", "a\nb\nc", ""]]),
    # A CR ending one chunk and an LF starting the next are one line ending, not a blank line.
    "crlf-split": ([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"], [["message", "a\nb", ""]]),
    "crlf-every-byte": (every_byte(b"id: 7\r\ndata: a\r\n\r\n"), [["message", "a", "7"]]),
    "bom": ([b"\xef\xbb\xbfdata: a\n\n"], [["message", "a", ""]]),
    "bom-split": ([b"\xef", b"\xbb", b"\xbfdata: a\n\n"], [["message", "a", ""]]),
    # Only the first BOM goes: a later one is part of a field name nobody knows.
    "bom-once": ([b"\xef\xbb\xbfdata: a\n\n\xef\xbb\xbfdata: b\n\n"], [["message", "a", ""]]),
    "comments": ([b": hello\ndata: a\n:\n: data: b\n\n"], [["message", "a", ""]]),
    "multi-line": ([b"data: a\ndata:\ndata:  b\ndata:c\n\n"], [["message", "a\n\n b\nc", ""]]),
    "field-without-colon": ([b"data\n\n"], [["message", "", ""]]),
    "unknown-field": ([b"foo: x\ndata: a\nDATA: b\n\n"], [["message", "a", ""]]),
    "event-type": (
        [b"event: order.paid\ndata: a\n\ndata: b\n\n"],
        [["order.paid", "a", ""], ["message", "b", ""]],
    ),
    "empty-event-type": ([b"event:\ndata: a\n\n"], [["message", "a", ""]]),
    # An empty data buffer dispatches nothing and forgets the event type, not the id.
    "empty-data": ([b"event: x\n\nid: 3\n\ndata: a\n\n"], [["message", "a", "3"]]),
    "id-persists": (
        [b"id: 1\ndata: a\n\ndata: b\n\nid\ndata: c\n\n"],
        [["message", "a", "1"], ["message", "b", "1"], ["message", "c", ""]],
    ),
    "id-with-nul": (
        [b"id: 5\ndata: a\n\nid: 6\x007\ndata: b\n\n"],
        [["message", "a", "5"], ["message", "b", "5"]],
    ),
    "unfinished-event-is-dropped": ([b"data: a\n\ndata: b\n"], [["message", "a", ""]]),
    "split-utf-8": (every_byte("data: é€😀\n\n".encode()), [["message", "é€😀", ""]]),
    "invalid-utf-8": ([b"data: \xff\n\n"], [["message", "\ufffd", ""]]),
}


@pytest.mark.parametrize("case", PARSER_CASES)
def test_parser(offline_page: Page, case: str) -> None:
    chunks, expected = PARSER_CASES[case]
    assert parse(offline_page, *chunks)["events"] == expected


def test_parser_retry_only_when_all_digits(offline_page: Page) -> None:
    stream = b"retry: 1500\n\nretry: 15x\nretry: -1\nretry:\nretry: 2.5\nretry:200\n\n"
    assert parse(offline_page, stream) == {"events": [], "retries": [1500, 200]}


# --- the fetch transport ------------------------------------------------------------------


def comparable(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What both transports must agree on: every hook call but the time it happened."""
    return [{k: v for k, v in e.items() if k != "at"} for e in entries]


STARTED = "log.some(e => ['notify.open', 'notify.catchup-end', 'notify.reset'].includes(e.name))"


@pytest.mark.parametrize("cursor", ["none", "behind", "invalid"])
def test_fetch_transport_sees_what_eventsource_sees(
    server: Server, page: Page, cursor: str
) -> None:
    before = [
        notify.publish("orders", {"n": 1}),
        notify.publish("orders", {"n": 2}, event="order.paid"),
        notify.publish("other", {"n": 3}),
    ]
    last_event_id = {"none": None, "behind": str(before[0].id), "invalid": "bogus"}[cursor]
    pages = {"eventsource": page, "fetch": page.context.new_page()}
    for transport, each in pages.items():
        open_page(each, server.url)
        start_client(
            each,
            channels=["orders"],
            transport=transport,
            storage=None,
            lastEventId=last_event_id,
            events=["order.paid"],
        )
    for each in pages.values():
        wait_for(each, STARTED)
    live = [notify.publish("orders", "live"), notify.publish("orders", {}, event="order.paid")]
    replayed = [before[1]] if cursor == "behind" else []
    for each in pages.values():
        wait_for_events(each, len(replayed) + 2)
    logs = {transport: comparable(log(each)) for transport, each in pages.items()}
    assert logs["fetch"] == logs["eventsource"]
    events = [e for e in logs["fetch"] if e["kind"] == "event"]
    assert [(e["envelope"]["id"], e["type"], e["replayed"]) for e in events] == [
        *((event.id, event.event, True) for event in replayed),
        (live[0].id, "message", False),
        (live[1].id, "order.paid", False),
    ]
    controls = [e["name"] for e in logs["fetch"] if e["kind"] == "control"]
    assert (
        controls
        == {
            "none": ["notify.open"],
            "behind": ["notify.catchup-start", "notify.catchup-end"],
            "invalid": ["notify.reset"],
        }[cursor]
    )


# --- behind a failing proxy -----------------------------------------------------------------


@pytest.fixture
def fast_server(start_server: StartServer) -> Server:
    """A daphne that asks browsers to reconnect after 300 ms rather than 3 s."""
    return start_server(RETRY_MS=300)


@pytest.fixture
def proxy(fast_server: Server) -> Iterator[Proxy]:
    proxy = Proxy(fast_server.port)
    yield proxy
    proxy.stop()


# Chromium logs failed requests (the EventSource's, the probe's) and cut streams by itself.
FAILED_REQUEST = r"status of (401|403|502|503)|net::ERR_|EventSource's response has"


def client_delays(page: Page) -> list[int]:
    """The delays of the client's reconnections after failed connections."""
    return [e["info"]["delay"] for e in log(page, "status") if "status" in e["info"]]


@pytest.mark.parametrize(
    ("transport", "status"), [("eventsource", 503), ("eventsource", 502), ("fetch", 503)]
)
def test_recovers_from_proxy_errors_with_backoff(
    proxy: Proxy, page: Page, transport: str, status: int
) -> None:
    page.expect_console_errors(FAILED_REQUEST)  # type: ignore[attr-defined]
    open_page(page, proxy.url)
    start_client(
        page, channels=["orders"], transport=transport, backoff={"initial": 100, "max": 1600}
    )
    wait_for_status(page, "open")
    seen = notify.publish("orders", {"n": 0})
    wait_for_events(page, 1)
    proxy.fail_next(1000, status)
    proxy.drop_connections()
    outage_started = time.monotonic()
    missed = [notify.publish("orders", {"n": n}).id for n in range(1, 4)]
    time.sleep(4)
    failed = [r for r in proxy.stream_requests() if r.failed_with]
    proxy.fail_next(0)
    events = wait_for_events(page, 4, timeout=5_000)
    live = notify.publish("orders", {"n": 4})
    events = wait_for_events(page, 5)

    # Nothing lost, nothing twice: what was published during the outage came as replayed.
    assert [e["envelope"]["id"] for e in events] == [seen.id, *missed, live.id]
    assert [e["replayed"] for e in events] == [False, True, True, True, False]
    # Backoff: 100·2^n ms halved at worst, at most 1.6 s; each delay jittered within its
    # bounds, so over 4 s a handful of attempts, not a loop.
    delays = client_delays(page)
    assert 4 <= len(delays) <= 8, delays
    for attempt, delay in enumerate(delays):
        base = min(1600, 100 * 2**attempt)
        assert base / 2 <= delay <= base, (attempt, delays)
    assert len({delay / min(1600, 100 * 2**n) for n, delay in enumerate(delays)}) > 1, delays
    # EventSource costs two requests per attempt (the connection, then the probe).
    per_attempt = 2 if transport == "eventsource" else 1
    assert len(failed) <= per_attempt * (len(delays) + 1), failed
    # The requests reaching the proxy keep to those delays.
    attempts = failed[::per_attempt]
    gaps = [b.at - a.at for a, b in itertools.pairwise(attempts)]
    # (The last delay may still be running when the outage ends: one gap fewer.)
    kept = zip(gaps, delays, strict=False)
    assert all(gap >= delay / 1000 - 0.02 for gap, delay in kept), (gaps, delays)
    assert failed[0].at - outage_started < 1.0
    assert statuses(page)[-4:] == ["reconnecting", "connecting", "catching-up", "open"]


@pytest.mark.parametrize("transport", ["eventsource", "fetch"])
@pytest.mark.parametrize("status", [401, 403, 204])
def test_stops_for_good_on_401_403_204(
    proxy: Proxy, page: Page, transport: str, status: int
) -> None:
    page.expect_console_errors(FAILED_REQUEST)  # type: ignore[attr-defined]
    open_page(page, proxy.url)
    proxy.fail_next(1000, status)
    start_client(page, transport=transport, backoff={"initial": 100, "max": 200})
    wait_for_status(page, "closed")
    closed = log(page, "status")[-1]["info"]
    body = "" if status == 204 else f"{status} {HTTPStatus(status).phrase} (test proxy)"
    assert closed == {"reason": f"http-{status}", "status": status, "message": body}
    time.sleep(1)
    # One attempt (and the probe that read its status), never another.
    assert len(proxy.stream_requests()) == (2 if transport == "eventsource" else 1)
    assert statuses(page) == ["connecting", "closed"]


@pytest.mark.parametrize("transport", ["eventsource", "fetch"])
def test_reports_the_reason_the_server_refuses_a_channel(
    start_server: StartServer, page: Page, transport: str
) -> None:
    server = start_server(AUTHORIZE=POLICY)
    page.expect_console_errors(r"status of 403")  # type: ignore[attr-defined]
    open_page(page, server.url)
    start_client(page, channels=["staff"], transport=transport)
    wait_for_status(page, "closed")
    closed = log(page, "status")[-1]["info"]
    assert closed["reason"] == "http-403"
    assert "staff" in closed["message"]


@pytest.mark.parametrize("transport", ["eventsource", "fetch"])
def test_reconnects_by_itself_after_a_dropped_stream(
    proxy: Proxy, page: Page, transport: str
) -> None:
    page.expect_console_errors(r"net::ERR_")  # type: ignore[attr-defined]
    open_page(page, proxy.url)
    headers = {"Authorization": "Bearer t"} if transport == "fetch" else {}
    start_client(page, channels=["orders"], transport=transport, headers=headers)
    wait_for_status(page, "open")
    seen = notify.publish("orders", {"n": 0})
    wait_for_events(page, 1)
    proxy.drop_connections()
    missed = notify.publish("orders", {"n": 1})
    events = wait_for_events(page, 2)
    assert [(e["envelope"]["id"], e["replayed"]) for e in events] == [
        (seen.id, False),
        (missed.id, True),
    ]
    first, again = proxy.stream_requests()
    # The reconnection sends the cursor in Last-Event-ID, after the server's retry: delay.
    assert first.headers.get("last-event-id") is None
    assert again.headers["last-event-id"] == str(seen.id)
    assert again.at - first.at >= 0.3
    reconnecting = [e["info"] for e in log(page, "status") if e["state"] == "reconnecting"]
    if transport == "fetch":
        assert again.headers["authorization"] == "Bearer t"
        assert reconnecting == [{"reason": "dropped", "delay": 300, "by": "client"}]
    else:
        assert "authorization" not in again.headers
        assert reconnecting == [{"by": "browser"}]


# --- the client's controls ------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["eventsource", "fetch"])
def test_disconnect_reconnect_and_clear_history(proxy: Proxy, page: Page, transport: str) -> None:
    warnings = record_warnings(page)
    open_page(page, proxy.url)
    start_client(page, channels=["orders"], transport=transport)
    wait_for_status(page, "open")
    seen = notify.publish("orders", {"n": 0})
    wait_for_events(page, 1)

    page.evaluate("() => client.disconnect()")
    assert page.evaluate("() => client.status") == "closed"
    requests = len(proxy.stream_requests())
    missed = notify.publish("orders", {"n": 1})
    time.sleep(0.5)
    assert len(log(page, "event")) == 1
    assert len(proxy.stream_requests()) == requests

    page.evaluate("() => client.reconnect()")
    events = wait_for_events(page, 2)
    assert [(e["envelope"]["id"], e["replayed"]) for e in events] == [
        (seen.id, False),
        (missed.id, True),
    ]
    assert [e["info"] for e in log(page, "catchup")] == [
        {"after": seen.id},
        {"count": 1, "last_id": missed.id},
    ]

    page.evaluate("() => client.disconnect()")
    notify.publish("orders", {"n": 2})
    page.evaluate("() => client.clearHistory()")
    key = "notify:last-event-id:/notify/stream/?channel=orders"
    assert page.evaluate("(key) => localStorage.getItem(key)", key) is None
    assert page.evaluate("() => client.lastEventId") is None
    page.evaluate("() => client.reconnect()")
    wait_for(page, "log.filter(e => e.name === 'notify.open').length === 2")
    live = notify.publish("orders", {"n": 3})
    events = wait_for_events(page, 3)
    # Nothing replayed: the event published before clearHistory() is not seen.
    assert [(e["envelope"]["id"], e["replayed"]) for e in events][2:] == [(live.id, False)]
    assert page.evaluate("(key) => localStorage.getItem(key)", key) == str(live.id)
    assert statuses(page) == [
        "connecting",
        "open",
        "closed",
        "connecting",
        "catching-up",
        "open",
        "closed",
        "connecting",
        "open",
    ]
    assert warnings == []


def test_explicit_cursor_overrides_storage_and_storage_can_be_off(
    server: Server, page: Page
) -> None:
    first = notify.publish("orders", {"n": 1})
    second = notify.publish("orders", {"n": 2})
    open_page(page, server.url)
    key = "notify:last-event-id:/notify/stream/?channel=orders"
    page.evaluate("([key, id]) => localStorage.setItem(key, id)", [key, str(second.id)])
    start_client(page, channels=["orders"], lastEventId=first.id, storage=None)
    events = wait_for_events(page, 1)
    assert [(e["envelope"]["id"], e["replayed"]) for e in events] == [(second.id, True)]
    assert page.evaluate("(key) => localStorage.getItem(key)", key) == str(second.id)
    assert page.evaluate("() => [client.lastEventId, client.channels, client.transport]") == [
        str(second.id),
        ["orders"],
        "eventsource",
    ]


@pytest.mark.parametrize("transport", ["eventsource", "fetch"])
def test_reset_when_history_is_gone(server: Server, page: Page, transport: str) -> None:
    first, second, third = (notify.publish("orders", {"n": n}) for n in range(3))
    Event.objects.filter(id__lte=second.id).delete()
    open_page(page, server.url)
    start_client(page, channels=["orders"], transport=transport, lastEventId=first.id)
    events = wait_for_events(page, 1)
    assert [(e["envelope"]["id"], e["replayed"]) for e in events] == [(third.id, True)]
    assert [e["info"] for e in log(page, "reset")] == [
        {"reason": "history-gone", "oldest_id": third.id, "id": str(second.id)}
    ]
    assert statuses(page) == ["connecting", "catching-up", "open"]
    key = "notify:last-event-id:/notify/stream/?channel=orders"
    assert page.evaluate("(key) => localStorage.getItem(key)", key) == str(third.id)


def test_a_failing_handler_does_not_stop_the_stream(server: Server, page: Page) -> None:
    page.expect_console_errors("handler broke")  # type: ignore[attr-defined]
    open_page(page, server.url)
    start_client(page)
    page.evaluate("() => client.on('message', () => { throw new Error('handler broke'); })")
    wait_for_status(page, "open")
    first = notify.publish("broadcast", 1)
    second = notify.publish("broadcast", 2)
    assert [e["envelope"]["id"] for e in wait_for_events(page, 2)] == [first.id, second.id]


def test_options_are_checked(offline_page: Page) -> None:
    errors = offline_page.evaluate(
        """() => [{ transport: "websocket" }, { headers: { Authorization: "Bearer t" } }]
            .map((options) => {
                try { new notify.NotifyClient("/notify/stream/", options); }
                catch (error) { return error.message; }
            })"""
    )
    assert errors == [
        'transport "websocket" is unknown; use "eventsource" or "fetch"',
        'EventSource cannot send headers; use transport: "fetch"',
    ]


def test_connect_false_waits_for_connect(server: Server, page: Page) -> None:
    open_page(page, server.url)
    assert start_client(page, connect=False) == "closed"
    page.evaluate("() => client.connect()")
    wait_for(page, "log.some(e => e.name === 'notify.open')")
    event = notify.publish("broadcast", {"hello": True})
    assert wait_for_events(page, 1)[0]["envelope"]["channel"] == "broadcast" == event.channel
