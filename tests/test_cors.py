"""Cross-origin streams (``NOTIFY["CORS_ALLOWED_ORIGINS"]``): headers over HTTP from both the
ASGI handler and the fallback view, then a real Chromium reading a stream from a page of
another origin (another port on 127.0.0.1: cross-origin, yet same-site, so the session
cookie, ``SameSite=Lax`` by default, goes with a ``withCredentials`` request)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import httpx
import pytest
from django.contrib.auth.models import User
from django.test import Client

import notify
from notify import cors
from tests.conftest import free_port
from tests.policies import POLICY

ALLOWED = "https://app.example.com"
APPS = ["tests.asgi:application", "tests.asgi_unwrapped:application"]
WILDCARD_REFUSED = (
    'NOTIFY["CORS_ALLOWED_ORIGINS"] has "*" while NOTIFY["CORS_ALLOW_CREDENTIALS"] is true'
)


def stream_url(server, channel: str = "broadcast") -> str:
    return f"{server.url}/notify/stream/?channel={channel}"


def stream_headers(url: str, headers: dict[str, str] | list[tuple[str, str]]) -> httpx.Headers:
    with httpx.Client(timeout=10) as client, client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        assert next(response.iter_raw()).startswith(b"retry:")
        return response.headers


def cors_names(headers: httpx.Headers) -> set[str]:
    return {name for name in headers if name.lower().startswith("access-control-")}


@pytest.mark.parametrize("app", APPS)
def test_allowed_origin_gets_its_cors_headers(start_server, app):
    server = start_server(app=app, CORS_ALLOWED_ORIGINS=[ALLOWED, "http://other.example"])
    headers = stream_headers(stream_url(server), {"Origin": ALLOWED})
    assert headers["Access-Control-Allow-Origin"] == ALLOWED
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in headers["Vary"]
    assert headers["Content-Type"] == "text/event-stream; charset=utf-8"


@pytest.mark.parametrize("app", APPS)
def test_other_origins_get_no_cors_headers(start_server, app):
    server = start_server(app=app, CORS_ALLOWED_ORIGINS=[ALLOWED])
    for origin in ["https://evil.example", ALLOWED + ".evil.example", "null", ALLOWED.upper()]:
        headers = stream_headers(stream_url(server), {"Origin": origin})
        assert cors_names(headers) == set(), origin
        assert "Origin" in headers["Vary"]
    assert cors_names(stream_headers(stream_url(server), {})) == set()
    # Origin is one value: given twice, it is no origin (both servers join the two with ",").
    twice = stream_headers(stream_url(server), [("Origin", ALLOWED), ("Origin", ALLOWED)])
    assert cors_names(twice) == set()


@pytest.mark.parametrize("app", APPS)
def test_no_cors_headers_by_default(start_server, app):
    server = start_server(app=app)
    headers = stream_headers(stream_url(server), {"Origin": ALLOWED})
    assert cors_names(headers) == set()
    response = httpx.options(stream_url(server), headers=preflight_headers(ALLOWED), timeout=10)
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET"
    assert cors_names(response.headers) == set()


def test_credentials_can_be_switched_off(start_server):
    server = start_server(CORS_ALLOWED_ORIGINS=[ALLOWED], CORS_ALLOW_CREDENTIALS=False)
    headers = stream_headers(stream_url(server), {"Origin": ALLOWED})
    assert headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "Access-Control-Allow-Credentials" not in headers


def test_a_wildcard_without_credentials_lets_every_origin_read_without_them(start_server):
    server = start_server(CORS_ALLOWED_ORIGINS=["*"], CORS_ALLOW_CREDENTIALS=False)
    headers = stream_headers(stream_url(server), {"Origin": "https://any.example"})
    assert headers["Access-Control-Allow-Origin"] == "https://any.example"
    assert "Access-Control-Allow-Credentials" not in headers
    assert WILDCARD_REFUSED not in server.output()


def preflight_headers(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "last-event-id",
    }


@pytest.mark.parametrize("app", APPS)
def test_preflight(start_server, app):
    server = start_server(app=app, CORS_ALLOWED_ORIGINS=[ALLOWED])
    response = httpx.options(stream_url(server), headers=preflight_headers(ALLOWED), timeout=10)
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert response.headers["Access-Control-Allow-Methods"] == "GET"
    assert response.headers["Access-Control-Allow-Headers"] == "Last-Event-ID, Authorization"
    assert response.headers["Access-Control-Max-Age"] == str(cors.MAX_AGE_SECONDS)
    assert "Origin" in response.headers["Vary"]
    # Another origin's preflight is a method the stream does not allow.
    other = httpx.options(
        stream_url(server), headers=preflight_headers("https://evil.example"), timeout=10
    )
    assert other.status_code == 405
    assert cors_names(other.headers) == set()
    assert "Traceback" not in server.output()


@pytest.mark.parametrize("app", APPS)
def test_a_wildcard_with_credentials_matches_no_origin_though_no_check_ran(start_server, app):
    # notify.E011 refuses this, but daphne runs no system check: reflecting every origin
    # with credentials would let any site read the streams of its logged-in visitors.
    server = start_server(app=app, CORS_ALLOWED_ORIGINS=["*", ALLOWED])
    assert (
        cors_names(stream_headers(stream_url(server), {"Origin": "https://evil.example"})) == set()
    )
    # An error naming the settings, once: later requests add nothing.
    logged = server.output().count(WILDCARD_REFUSED)
    assert logged > 0
    for origin in ["https://evil.example", "null"]:
        headers = stream_headers(stream_url(server), {"Origin": origin})
        assert cors_names(headers) == set(), origin
        preflight = httpx.options(stream_url(server), headers=preflight_headers(origin), timeout=10)
        assert preflight.status_code == 405, origin
        assert cors_names(preflight.headers) == set(), origin
    # The origins listed by name still may.
    headers = stream_headers(stream_url(server), {"Origin": ALLOWED})
    assert headers["Access-Control-Allow-Origin"] == ALLOWED
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert server.output().count(WILDCARD_REFUSED) == logged


# -- in a browser ------------------------------------------------------------------------

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"></head><body><script>
const params = new URLSearchParams(location.search);
window.log = [];
const source = new EventSource(params.get("stream"), {withCredentials: true});
for (const type of ["notify.open", "message"]) {
  source.addEventListener(type, (e) => window.log.push({type: e.type, data: JSON.parse(e.data)}));
}
source.onerror = () => window.log.push({type: "error", state: source.readyState});
</script></body></html>
"""


class PageServer:
    """A page of another origin: a plain HTTP server on its own port, serving ``PAGE``."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(PAGE)))
                self.end_headers()
                self.wfile.write(PAGE)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def pages() -> Iterator[tuple[PageServer, PageServer]]:
    """Two page origins: the first is allowed, the second is not."""
    allowed, other = PageServer(), PageServer()
    yield allowed, other
    allowed.stop()
    other.stop()


def open_page(page, page_server: PageServer, stream: str) -> None:
    page.goto(str(httpx.URL(page_server.origin + "/", params={"stream": stream})))


def test_browser_reads_a_stream_from_an_allowed_origin_with_its_cookie(start_server, page, pages):
    allowed, _ = pages
    server = start_server(AUTHORIZE=POLICY, CORS_ALLOWED_ORIGINS=[allowed.origin])
    user = User.objects.create_user("alice")
    client = Client()
    client.force_login(user)
    # Cookies are not per port: the session cookie of the server goes with requests to it,
    # whichever page of 127.0.0.1 makes them.
    page.context.add_cookies(
        [{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": server.url}]
    )
    # user:<pk> is readable by that user only: the stream opens only if the cookie was sent.
    open_page(page, allowed, stream_url(server, f"user:{user.pk}"))
    page.wait_for_function("window.log.some((e) => e.type === 'notify.open')")
    event = notify.publish(f"user:{user.pk}", {"hello": "cross-origin"})
    page.wait_for_function("window.log.some((e) => e.type === 'message')")
    log = page.evaluate("window.log")
    assert [e["type"] for e in log] == ["notify.open", "message"]
    assert log[1]["data"]["id"] == event.id
    assert log[1]["data"]["data"] == {"hello": "cross-origin"}


def test_browser_is_refused_a_stream_from_another_origin(start_server, page, pages):
    allowed, other = pages
    server = start_server(CORS_ALLOWED_ORIGINS=[allowed.origin])
    page.expect_console_errors("CORS policy|ERR_FAILED")
    open_page(page, other, stream_url(server))
    # A CORS failure fails the connection for good: CLOSED (2), no reconnection.
    page.wait_for_function("window.log.some((e) => e.type === 'error')")
    notify.publish("broadcast", "unseen")
    page.wait_for_timeout(500)
    assert page.evaluate("window.log") == [{"type": "error", "state": 2}]
