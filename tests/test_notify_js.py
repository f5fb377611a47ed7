"""notify.js in a real Chromium against daphne: the three transports (EventSource, fetch,
WebSocket), the cursor, the SSE parser, recovery behind a failing proxy and after the server
closes a WebSocket, and the client's controls."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, Request, Route, WebSocket, WebSocketRoute

import notify
from notify.models import Event
from tests.conftest import Server, StartServer
from tests.js_pages import NOTIFY_STATIC, render_page
from tests.policies import POLICY
from tests.proxy import Proxy

STREAM = "/notify/stream/"
TRANSPORTS = ["eventsource", "fetch", "websocket"]


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


def record_connections(page: Page) -> list[str]:
    """The URLs of the streams the page opens from now on, over any transport (the probes
    that read a failed EventSource's status included)."""
    urls: list[str] = []

    def request(request: Request) -> None:
        if urlsplit(request.url).path == STREAM:
            urls.append(request.url)

    def websocket(websocket: WebSocket) -> None:
        urls.append(websocket.url)

    page.on("request", request)
    page.on("websocket", websocket)
    return urls


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_delivers_live_events(server: Server, page: Page, transport: str) -> None:
    warnings = record_warnings(page)
    open_page(page, server.url)
    # The page found the stream's URL where {% notify_script %} put it.
    assert page.evaluate("() => window.streamUrl") == STREAM
    start_client(page, channels=["orders", "user:1"], transport=transport)
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
    # The same key whatever the transport: a page that switches keeps its place.
    key = "notify:last-event-id:/notify/stream/?channel=orders&channel=user%3A1"
    assert page.evaluate("(key) => localStorage.getItem(key)", key) == str(second.id)
    assert page.evaluate("() => window.client.lastEventId") == str(second.id)
    page.evaluate("() => window.client.disconnect()")
    assert warnings == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_named_event_types_reach_handlers(server: Server, page: Page, transport: str) -> None:
    open_page(page, server.url)
    start_client(page, channels=["orders"], events=["order.shipped"], transport=transport)
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


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_reload_resumes_from_the_stored_cursor(server: Server, page: Page, transport: str) -> None:
    open_page(page, server.url)
    start_client(page, channels=["orders"], transport=transport)
    wait_for_status(page, "open")
    seen = notify.publish("orders", {"n": 0})
    wait_for_events(page, 1)
    # Leave the page while the stream is open (and come back to a fresh one).
    page.goto("about:blank")
    missed = [notify.publish("orders", {"n": n}).id for n in range(1, 4)]
    open_page(page, server.url)
    start_client(page, channels=["orders"], transport=transport)
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


# --- the fetch and websocket transports ------------------------------------------------------


def comparable(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What every transport must agree on: every hook call but the time it happened."""
    return [{k: v for k, v in e.items() if k != "at"} for e in entries]


STARTED = "log.some(e => ['notify.open', 'notify.catchup-end', 'notify.reset'].includes(e.name))"


@pytest.mark.parametrize("cursor", ["none", "behind", "invalid"])
def test_every_transport_sees_what_eventsource_sees(
    server: Server, page: Page, cursor: str
) -> None:
    before = [
        notify.publish("orders", {"n": 1}),
        notify.publish("orders", {"n": 2}, event="order.paid"),
        notify.publish("other", {"n": 3}),
    ]
    last_event_id = {"none": None, "behind": str(before[0].id), "invalid": "bogus"}[cursor]
    pages = {"eventsource": page, "fetch": page.context.new_page()}
    pages["websocket"] = page.context.new_page()
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
    assert logs["websocket"] == logs["eventsource"]
    events = [e for e in logs["fetch"] if e["kind"] == "event"]
    assert [(e["envelope"]["id"], e["type"], e["replayed"]) for e in events] == [
        *((event.id, event.event, True) for event in replayed),
        (live[0].id, "message", False),
        (live[1].id, "order.paid", False),
    ]
    controls = [(e["name"], e["id"]) for e in logs["fetch"] if e["kind"] == "control"]
    # Each with the id the client has everything through from then on.
    newest = str(before[-1].id)
    assert (
        controls
        == {
            "none": [("notify.open", newest)],
            "behind": [
                ("notify.catchup-start", str(before[0].id)),
                ("notify.catchup-end", str(before[1].id)),
            ],
            "invalid": [("notify.reset", newest)],
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


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_reports_the_reason_the_server_refuses_a_channel(
    start_server: StartServer, page: Page, transport: str
) -> None:
    server = start_server(AUTHORIZE=POLICY, RETRY_MS=100)
    page.expect_console_errors(r"status of 403")  # type: ignore[attr-defined]
    open_page(page, server.url)
    connections = record_connections(page)
    start_client(page, channels=["staff"], transport=transport, backoff={"initial": 100})
    wait_for_status(page, "closed")
    closed = log(page, "status")[-1]["info"]
    if transport == "websocket":
        # The reason comes in the notify.error message: daphne drops a close frame's.
        assert closed == {"reason": "ws-4403", "code": 4403, "message": closed["message"]}
    else:
        assert closed == {"reason": "http-403", "status": 403, "message": closed["message"]}
    assert "staff" in closed["message"]
    time.sleep(0.5)
    # Stopped for good: one attempt (and, for EventSource, the probe that read its status).
    assert len(connections) == (2 if transport == "eventsource" else 1), connections
    assert statuses(page) == ["connecting", "closed"]


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


# --- how the websocket transport takes the server's close codes ---------------------------


def test_websocket_url(offline_page: Page) -> None:
    urls = offline_page.evaluate(
        """() => [
            ["/notify/stream/", {}],
            ["https://api.example.com/notify/stream/", {}],
            ["/notify/stream/", { websocketUrl: "/realtime/ws/" }],
            ["/notify/stream/", { websocketUrl: "wss://ws.example.com/notify/ws/" }],
        ].map(([url, options]) => new notify.NotifyClient(url, {
            ...options, transport: "websocket", channels: ["a", "user:1"], connect: false,
        }).websocketUrl)"""
    )
    assert urls == [
        "ws://notify.test/notify/ws/?channel=a&channel=user%3A1",
        "wss://api.example.com/notify/ws/?channel=a&channel=user%3A1",
        "ws://notify.test/realtime/ws/?channel=a&channel=user%3A1",
        "wss://ws.example.com/notify/ws/?channel=a&channel=user%3A1",
    ]


def serve_websocket(page: Page, *messages: dict[str, Any], code: int, reason: str = "") -> None:
    """Answer the page's WebSockets in Playwright itself: ``messages``, then a close with
    ``code`` (which a real server could not send: 1006, say)."""

    def handler(websocket: WebSocketRoute) -> None:
        for message in messages:
            websocket.send(json.dumps(message))
        websocket.close(code=code, reason=reason)

    page.route_web_socket("ws://notify.test/**", handler)


RETRY = {"type": "notify.retry", "retry": 300}
OPEN = {"type": "notify.open", "id": 7, "last_id": 7}
# Backoff {initial: 100, max: 400}: the first delay after a failure is 50 to 100 ms.
BACKOFF = (50, 100)
CLOSES: dict[str, tuple[list[dict[str, Any]], int, str, dict[str, Any] | tuple[int, int]]] = {
    # A refusal: stopped for good, with the reason of notify.error (daphne drops the close
    # frame's) or else of the close frame.
    "forbidden": (
        [RETRY, {"type": "notify.error", "code": 4403, "reason": "not yours"}],
        4403,
        "",
        {"reason": "ws-4403", "code": 4403, "message": "not yours"},
    ),
    "bad-request": (
        [RETRY],
        4400,
        "bad channel",
        {"reason": "ws-4400", "code": 4400, "message": "bad channel"},
    ),
    # The stream ended, was revoked, read too slowly, or the server shuts down: from the
    # cursor, after the server's retry delay (the last one it sent).
    "ended": (
        [RETRY, OPEN],
        4000,
        "lifetime",
        {"code": 4000, "reason": "ws-4000", "message": "lifetime", "delay": 300},
    ),
    "revoked": ([RETRY, OPEN], 4001, "", {"code": 4001, "reason": "ws-4001", "delay": 300}),
    "too-slow": ([RETRY, OPEN], 4408, "", {"code": 4408, "reason": "ws-4408", "delay": 300}),
    "shutdown": (
        [RETRY, OPEN, {"type": "notify.retry", "retry": 1234}],
        4012,
        "",
        {"code": 4012, "reason": "ws-4012", "delay": 1234},
    ),
    # A stream cut after it started: as a dropped SSE stream.
    "dropped": ([RETRY, OPEN], 1006, "", {"code": 1006, "reason": "dropped", "delay": 300}),
    # Failures: backoff.
    "network-error": ([], 1006, "", BACKOFF),
    "internal-error": ([RETRY, OPEN], 4500, "", BACKOFF),
    # A refused stream: a backoff, and not before the delay its first message gave (the SSE
    # answer's Retry-After: 30 s for too many streams, 5 s when the database is out of reach).
    "too-many": (
        [{"type": "notify.retry", "retry": 30_000}, {"type": "notify.error", "code": 4429}],
        4429,
        "",
        (30_000, 30_000),
    ),
    "unavailable": (
        [{"type": "notify.retry", "retry": 5000}, {"type": "notify.error", "code": 4503}],
        4503,
        "",
        (5000, 5000),
    ),
    "unavailable-quick": (
        [{"type": "notify.retry", "retry": 10}, {"type": "notify.error", "code": 4503}],
        4503,
        "",
        BACKOFF,
    ),
}


@pytest.mark.parametrize("case", CLOSES)
def test_websocket_close_codes(offline_page: Page, case: str) -> None:
    messages, code, reason, expected = CLOSES[case]
    page = offline_page
    serve_websocket(page, *messages, code=code, reason=reason)
    start_client(page, transport="websocket", backoff={"initial": 100, "max": 400})
    wait_for(page, "['reconnecting', 'closed'].includes(window.client.status)")
    page.evaluate("() => client.disconnect()")
    info = next(e["info"] for e in log(page, "status") if e["state"] in ("reconnecting", "closed"))
    if isinstance(expected, dict) and "delay" in expected:
        assert info == {**expected, "by": "client"}
    elif isinstance(expected, dict):
        assert info == expected
    else:
        assert info["code"] == code and info["by"] == "client"
        assert info["reason"] == ("network-error" if code == 1006 else f"ws-{code}")
        low, high = expected
        assert low <= info["delay"] <= high, info


def test_websocket_backs_off_and_resets_after_a_stream_starts(offline_page: Page) -> None:
    page = offline_page
    # Whether the stream starts (sends its first control event), connection by connection.
    starts = iter([False, False, False, True, False, False])

    def handler(websocket: WebSocketRoute) -> None:
        websocket.send(json.dumps(RETRY))
        if next(starts, False):
            websocket.send(json.dumps(OPEN))
        websocket.close(code=4500)

    page.route_web_socket("ws://notify.test/**", handler)
    start_client(page, transport="websocket", backoff={"initial": 100, "max": 400})
    wait_for(page, "log.filter(e => e.state === 'reconnecting').length >= 6")
    page.evaluate("() => client.disconnect()")
    delays = [e["info"]["delay"] for e in log(page, "status") if e["state"] == "reconnecting"]
    # 100·2^n ms, halved at worst; a stream that started begins the count again.
    for attempt, delay in zip([0, 1, 2, 0, 1, 2], delays, strict=False):
        base = min(400, 100 * 2**attempt)
        assert base / 2 <= delay <= base, delays


# --- the websocket transport against daphne ---------------------------------------------------


def test_websocket_stops_for_good_on_a_bad_request(server: Server, page: Page) -> None:
    open_page(page, server.url)
    start_client(page, transport="websocket", channels=["a b"])
    wait_for_status(page, "closed")
    closed = log(page, "status")[-1]["info"]
    assert closed["reason"] == "ws-4400" and closed["code"] == 4400
    assert "space" in closed["message"]


def assert_seen_missed_live(page: Page, seen: Event, missed: Event) -> None:
    """After a reconnection: the event seen before, the one missed (replayed), and a live one
    published now, each once."""
    live = notify.publish("orders", {"n": 2})
    events = wait_for_events(page, 3)
    assert [(e["envelope"]["id"], e["replayed"]) for e in events] == [
        (seen.id, False),
        (missed.id, True),
        (live.id, False),
    ]


def test_websocket_resumes_when_its_stream_ends(start_server: StartServer, page: Page) -> None:
    """A stream's lifetime is over (MAX_STREAM_SECONDS): the server closes with 4000, and the
    client reconnects after the retry delay from its cursor, missing nothing."""
    server = start_server(MAX_STREAM_SECONDS=1, RETRY_MS=500)
    open_page(page, server.url)
    connections = record_connections(page)
    start_client(page, transport="websocket", channels=["orders"])
    wait_for_status(page, "open")
    seen = notify.publish("orders", {"n": 0})
    wait_for_events(page, 1)
    wait_for_status(page, "reconnecting")
    missed = notify.publish("orders", {"n": 1})
    wait_for(page, "log.some(e => e.name === 'notify.catchup-end')")
    assert_seen_missed_live(page, seen, missed)
    reconnecting = [e["info"] for e in log(page, "status") if e["state"] == "reconnecting"]
    # (No message: daphne drops the close frame's reason, and an ended stream sends no
    # notify.error.)
    assert reconnecting[0] == {"code": 4000, "reason": "ws-4000", "delay": 500, "by": "client"}
    assert connections[1].endswith(f"?channel=orders&lastEventId={seen.id}")
    page.evaluate("() => client.disconnect()")


def test_websocket_comes_back_after_a_server_restart(start_server: StartServer, page: Page) -> None:
    """The server shuts down (4012, after a short notify.retry), nothing listens for a while
    (connections fail: backoff), then it is back: the client replays what it missed."""
    page.expect_console_errors(r"WebSocket connection to .* failed")  # type: ignore[attr-defined]
    server = start_server()
    open_page(page, server.url)
    start_client(
        page, transport="websocket", channels=["orders"], backoff={"initial": 100, "max": 400}
    )
    wait_for_status(page, "open")
    seen = notify.publish("orders", {"n": 0})
    wait_for_events(page, 1)
    server.stop()
    missed = notify.publish("orders", {"n": 1})
    wait_for(page, "log.some(e => e.info?.reason === 'network-error')")
    start_server(port=server.port)
    wait_for(page, "log.some(e => e.name === 'notify.catchup-end')")
    assert_seen_missed_live(page, seen, missed)
    reconnecting = [e["info"] for e in log(page, "status") if e["state"] == "reconnecting"]
    shutdown = reconnecting[0]
    assert shutdown["code"] == 4012 and 250 <= shutdown["delay"] <= 2000, shutdown
    # (A reconnection may reach the server while it still drains: 4012 again.)
    failures = [info for info in reconnecting if info["code"] != 4012]
    assert failures and all(f["reason"] == "network-error" for f in failures), reconnecting
    for attempt, failure in enumerate(failures):
        base = min(400, 100 * 2**attempt)
        assert base / 2 <= failure["delay"] <= base, failures
    page.evaluate("() => client.disconnect()")


# --- the client's controls ------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_disconnect_reconnect_and_clear_history(
    fast_server: Server, page: Page, transport: str
) -> None:
    warnings = record_warnings(page)
    open_page(page, fast_server.url)
    connections = record_connections(page)
    start_client(page, channels=["orders"], transport=transport)
    wait_for_status(page, "open")
    seen = notify.publish("orders", {"n": 0})
    wait_for_events(page, 1)

    page.evaluate("() => client.disconnect()")
    assert page.evaluate("() => client.status") == "closed"
    requests = len(connections)
    missed = notify.publish("orders", {"n": 1})
    time.sleep(0.5)
    assert len(log(page, "event")) == 1
    assert len(connections) == requests

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


@pytest.mark.parametrize("transport", TRANSPORTS)
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
        """() => [
            { transport: "sse" },
            { headers: { Authorization: "Bearer t" } },
            { transport: "websocket", headers: { Authorization: "Bearer t" } },
            { transport: "websocket", websocketUrl: "ftp://notify.test/ws/" },
        ].map((options) => {
            try { new notify.NotifyClient("/notify/stream/", { ...options, connect: false }); }
            catch (error) { return `${error.name}: ${error.message}`; }
        })"""
    )
    assert errors == [
        'TypeError: transport "sse" is unknown; use "eventsource", "fetch" or "websocket"',
        'TypeError: EventSource cannot send headers; use transport: "fetch"',
        'TypeError: A WebSocket cannot send headers; use transport: "fetch"',
        'TypeError: websocketUrl "ftp://notify.test/ws/" is not a ws:, wss:, http: or https: URL',
    ]


def test_connect_false_waits_for_connect(server: Server, page: Page) -> None:
    open_page(page, server.url)
    assert start_client(page, connect=False) == "closed"
    page.evaluate("() => client.connect()")
    wait_for(page, "log.some(e => e.name === 'notify.open')")
    event = notify.publish("broadcast", {"hello": True})
    assert wait_for_events(page, 1)[0]["envelope"]["channel"] == "broadcast" == event.channel
