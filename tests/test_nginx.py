"""notify deployed as docs/deploy.md says: deploy/nginx.conf in front of two daphne
processes that share the test's Redis and database; the command of deploy/notify@.service
and deploy/Procfile. The stream is read over SSE (httpx), over a WebSocket (the
``websockets`` package's sync client, tests/ws_client.py), and by Chromium.

The nginx is Debian's (``make test`` installs it; ``NOTIFY_TEST_NGINX`` names another
binary), run as a master process of the test's own on free ports: ``nginx -p <tmp> -c
<tmp>/nginx.conf -g 'daemon off;'``, a child of the test, stopped at its end. The main
configuration is the test's (``MAIN_CONF``); the site is deploy/nginx.conf with only what a
machine chooses put in place: the processes' ports, the listening ports, the certificate
(self-signed, made with openssl) and the static directory (filled by the demo project's
``manage.py collectstatic``). The main configuration adds one response header,
``X-Upstream``, naming the process that answered (a WebSocket's handshake too).
"""

from __future__ import annotations

import inspect
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import daphne.server
import httpx
import pytest
from playwright.sync_api import Browser
from websockets.exceptions import InvalidStatus

import notify
from notify import shutdown, websocket
from notify.conf import DEFAULTS
from notify.sse import CATCHUP_END, OPEN
from notify.views.publish import ENVELOPE_ALLOWANCE
from tests.conftest import (
    ROOT,
    Server,
    SSEClient,
    StartServer,
    free_port,
    payload,
    server_env,
    stop_process,
)
from tests.processes import wait_for_port
from tests.ws_client import WSClient, event_ids

NGINX = os.environ.get("NOTIFY_TEST_NGINX") or shutil.which("nginx") or "/usr/sbin/nginx"
SITE = ROOT / "deploy" / "nginx.conf"
UNIT = ROOT / "deploy" / "notify@.service"
PROCFILE = ROOT / "deploy" / "Procfile"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
STREAM = "/notify/stream/?channel=orders"
WS_STREAM = "/notify/ws/?channel=orders"
TOKEN = secrets.token_urlsafe(32)

MAIN_CONF = """\
# Started by root, nginx would run its workers as "nobody", who cannot read the test's
# private directories: they run as the user running the test (ignored when not root).
user {user};
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{
    worker_connections 512;
}}
http {{
    types {{
        text/css css;
        text/javascript js;
    }}
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    # The process that answered; empty, so left out, for a static file. The site adds no
    # header of its own, so this one reaches all of its locations.
    add_header X-Upstream $upstream_addr always;
    include {prefix}/site.conf;
}}
"""


def substitute(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"deploy/nginx.conf should hold {old!r} once"
    return text.replace(old, new)


def render_site(
    upstream_ports: Sequence[int],
    http_port: int,
    https_port: int,
    certificate: tuple[Path, Path],
    static_root: Path,
    changes: dict[str, str],
) -> str:
    """deploy/nginx.conf with this machine's values in place of its own, then ``changes``
    (each an exact text of the file, found once, and its replacement)."""
    text = SITE.read_text()
    servers = "".join(f"    server 127.0.0.1:{port};\n" for port in upstream_ports)
    text, found = re.subn(
        r"^(?:    server 127\.0\.0\.1:\d+;\n)+", servers, text, count=1, flags=re.M
    )
    assert found == 1, "deploy/nginx.conf should list its servers one per line"
    text = substitute(text, "listen 80;", f"listen 127.0.0.1:{http_port};")
    text = substitute(text, "listen [::]:80;\n", "")
    text = substitute(text, "listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;")
    text = substitute(text, "listen [::]:443 ssl http2;\n", "")
    cert, key = certificate
    text = substitute(text, "/etc/letsencrypt/live/notify.example.com/fullchain.pem", str(cert))
    text = substitute(text, "/etc/letsencrypt/live/notify.example.com/privkey.pem", str(key))
    text = substitute(text, "alias /srv/notify/static/;", f"alias {static_root}/;")
    for old, new in changes.items():
        text = substitute(text, old, new)
    return text


@dataclass
class Nginx:
    process: subprocess.Popen[bytes]
    prefix: Path
    http_port: int
    https_port: int
    certificate: Path

    @property
    def tls(self) -> ssl.SSLContext:
        """A new client context that trusts the test's certificate."""
        return ssl.create_default_context(cafile=self.certificate)

    def url(self, path: str, scheme: str = "https") -> str:
        return f"{scheme}://127.0.0.1:{self.https_port}{path}"

    @property
    def origin(self) -> str:
        """The site's own origin, which its pages send."""
        return f"https://127.0.0.1:{self.https_port}"

    def get(self, path: str, **options: Any) -> httpx.Response:
        return httpx.get(self.url(path), verify=self.tls, **options)

    def stream(self, last_event_id: str | None = None) -> SSEClient:
        """A stream of channel ``orders`` through nginx; without a cursor, once it is open.
        Its reads wait 3 s at most: with heartbeats every second, a healthy stream is never
        silent that long."""
        client: SSEClient | None = None
        try:
            client = SSEClient(
                self.url(STREAM), last_event_id=last_event_id, read_timeout=3.0, verify=self.tls
            )
            assert client.response.status_code == 200
            if last_event_id is None:
                assert client.next().event == "notify.open"
        except BaseException as exc:
            if client is not None:
                client.close()
            if isinstance(exc, httpx.ReadTimeout):
                # A buffering nginx holds back even the response's head.
                raise AssertionError("nothing came through nginx for 3 s: buffered?") from None
            raise
        return client

    def websocket_client(
        self, path: str = WS_STREAM, source: str = "127.0.0.1", **options: Any
    ) -> WSClient:
        """A WebSocket to ``path`` through nginx, from the address ``source`` (all of 127/8
        is this machine). Its reads wait 3 s at most. ``options`` are WSClient's."""
        return WSClient(
            self.url(path, scheme="wss"),
            timeout=3.0,
            ssl=self.tls,
            source_address=(source, 0),
            **options,
        )

    def websocket(self, last_event_id: str | None = None, **options: Any) -> WSClient:
        """A WebSocket stream of channel ``orders`` through nginx; without a cursor, once it
        is open. ``options`` are ``websocket_client``'s."""
        path = WS_STREAM if last_event_id is None else f"{WS_STREAM}&lastEventId={last_event_id}"
        client = self.websocket_client(path, **options)
        try:
            assert client.next()["type"] == websocket.RETRY
            if last_event_id is None:
                assert client.next()["type"] == OPEN
        except BaseException:
            client.close()
            raise
        return client

    def log(self) -> str:
        return (self.prefix / "error.log").read_text(errors="replace")

    def access_log(self) -> str:
        return (self.prefix / "access.log").read_text(errors="replace")


def upstream(client: WSClient) -> str:
    """The processes nginx tried for a WebSocket's handshake, the one that answered last."""
    response = client.connection.response
    assert response is not None
    return response.headers["X-Upstream"]


def cursor(client: WSClient) -> str | None:
    """What a client resumes from: the ``id`` of the last message that has one."""
    ids = [message["id"] for message in client.received if message.get("id") is not None]
    return str(ids[-1]) if ids else None


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "1"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def static_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo project's static files, gathered as docs/deploy.md does."""
    directory = tmp_path_factory.mktemp("static")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings"}
    env["DJANGO_STATIC_ROOT"] = str(directory)
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=60,
    )
    return directory


StartNginx = Callable[..., Nginx]


@pytest.fixture
def start_nginx(
    tmp_path: Path, certificate: tuple[Path, Path], static_root: Path
) -> Iterator[StartNginx]:
    """``start_nginx(upstream_ports, changes={exact text of the site: replacement})``."""
    started: list[Nginx] = []

    def start(upstream_ports: Sequence[int], changes: dict[str, str] | None = None) -> Nginx:
        prefix = tmp_path / f"nginx-{len(started)}"
        prefix.mkdir()
        http_port, https_port = free_port(), free_port()
        site = render_site(
            upstream_ports, http_port, https_port, certificate, static_root, changes or {}
        )
        (prefix / "site.conf").write_text(site)
        user = pwd.getpwuid(os.geteuid()).pw_name
        (prefix / "nginx.conf").write_text(MAIN_CONF.format(user=user, prefix=prefix))
        process = subprocess.Popen(
            [
                *(NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf")),
                *("-e", str(prefix / "error.log"), "-g", "daemon off;"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        nginx = Nginx(process, prefix, http_port, https_port, certificate[0])
        started.append(nginx)
        try:
            wait_for_port(https_port, timeout=10, process=process)
        except (RuntimeError, TimeoutError):
            raise RuntimeError(f"nginx did not start:\n{nginx.log()}") from None
        return nginx

    yield start
    for nginx in started:
        stop_process(nginx.process)


@dataclass
class Deployment:
    servers: list[Server]
    nginx: Nginx

    @property
    def upstreams(self) -> set[str]:
        """The processes as nginx names them in ``X-Upstream``."""
        return {f"127.0.0.1:{server.port}" for server in self.servers}

    def server_at(self, upstream: str) -> Server:
        """The process that answered, from its ``X-Upstream``."""
        (server,) = [s for s in self.servers if f"127.0.0.1:{s.port}" == upstream]
        return server


Deploy = Callable[..., Deployment]


@pytest.fixture
def deploy(start_server: StartServer, start_nginx: StartNginx) -> Deploy:
    """``deploy(changes=None, allowed_hosts=["*"], server_args=(), **NOTIFY)``: two daphne
    processes run as docs/deploy.md runs them (``--proxy-headers``, then ``server_args``),
    with heartbeats every second, and nginx in front. ``allowed_hosts`` is their
    ``ALLOWED_HOSTS``, which the WebSocket origin check reads."""

    def start(
        changes: dict[str, str] | None = None,
        allowed_hosts: Sequence[str] = ("*",),
        server_args: Sequence[str] = (),
        **notify_settings: Any,
    ) -> Deployment:
        notify_settings = {"HEARTBEAT_SECONDS": 1, "PUBLISH_TOKENS": [TOKEN], **notify_settings}
        servers = [
            start_server(
                server_args=["--proxy-headers", *server_args],
                env={"NOTIFY_TEST_ALLOWED_HOSTS": json.dumps(list(allowed_hosts))},
                **notify_settings,
            )
            for _ in range(2)
        ]
        return Deployment(servers, start_nginx([server.port for server in servers], changes))

    return start


class RawStream:
    """A stream of channel ``orders`` through nginx, opened from the address ``source`` (all
    of 127/8 is this machine), read as bytes."""

    def __init__(
        self, nginx: Nginx, source: str = "127.0.0.1", headers: dict[str, str] | None = None
    ) -> None:
        transport = httpx.HTTPTransport(verify=nginx.tls, local_address=source)
        self.client = httpx.Client(transport=transport, timeout=5.0)
        self.response = self.client.send(
            self.client.build_request("GET", nginx.url(STREAM), headers=headers), stream=True
        )
        # One iterator for the whole response: leaving an iter_raw() loop closes it.
        self.chunks = self.response.iter_raw()

    def __enter__(self) -> RawStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.response.close()
        self.client.close()

    def read_to_end(self) -> bytes:
        return b"".join(self.chunks)

    def read_until(self, marker: bytes) -> bytes:
        received = b""
        for chunk in self.chunks:
            received += chunk
            if marker in received:
                return received
        raise AssertionError(f"the stream ended before {marker!r}: {received!r}")


# -- the configuration ------------------------------------------------------------------


@pytest.mark.parametrize("path", [SITE, UNIT, PROCFILE], ids=lambda path: path.name)
def test_the_docs_show_the_files_the_tests_run(path: Path):
    assert path.read_text() in DEPLOY_DOC.read_text()


def unit_command() -> str:
    """The ``ExecStart`` of the systemd unit."""
    (line,) = [line for line in UNIT.read_text().splitlines() if line.startswith("ExecStart=")]
    return line.removeprefix("ExecStart=")


def test_the_procfile_runs_the_units_command_on_the_upstreams_ports():
    ports = re.findall(r"^    server 127\.0\.0\.1:(\d+);$", SITE.read_text(), re.M)
    command = unit_command().replace("/srv/notify/venv/bin/", "")
    expected = [f"web{n}: {command.replace('%i', port)}" for n, port in enumerate(ports, 1)]
    assert PROCFILE.read_text().splitlines() == expected


def location(path: str) -> str:
    """The text of ``location = <path> { ... }`` in deploy/nginx.conf."""
    found = re.search(
        rf"^    location = {re.escape(path)} \{{\n.*?^    \}}\n", SITE.read_text(), re.S | re.M
    )
    assert found is not None, f"deploy/nginx.conf should have a location = {path}"
    return found[0]


def in_location(path: str, old: str, new: str) -> dict[str, str]:
    """A change for ``start_nginx``: ``old`` replaced by ``new`` in that location only."""
    text = location(path)
    assert text.count(old) == 1, f"location = {path} should hold {old!r} once"
    return {text: text.replace(old, new)}


def read_timeout(path: str) -> int:
    timeout = re.search(r"^        proxy_read_timeout (\d+)s;$", location(path), re.M)
    assert timeout is not None, f"location = {path} should set proxy_read_timeout"
    return int(timeout[1])


def test_the_stream_outlasts_the_default_heartbeat():
    assert read_timeout("/notify/stream/") >= 2 * DEFAULTS["HEARTBEAT_SECONDS"]


def test_the_websocket_outlasts_daphnes_default_ping_interval():
    ping_interval = inspect.signature(daphne.server.Server).parameters["ping_interval"].default
    assert read_timeout("/notify/ws/") >= 2 * ping_interval


def proxy_headers(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ +proxy_set_header (\S+) (.+);$", text, re.M))


def test_the_websocket_location_sends_the_servers_headers_and_the_upgrade():
    """A location that sets a header of its own inherits none of the server's: the
    WebSocket's sets every one again (X-Forwarded-For is what MAX_STREAMS_PER_IP counts)."""
    server = proxy_headers(SITE.read_text().split("    location ")[0])
    assert set(server) == {"Connection", "Host", "X-Forwarded-For", "X-Forwarded-Proto"}
    assert proxy_headers(location("/notify/ws/")) == {
        **server,
        "Upgrade": "$http_upgrade",
        "Connection": "$connection_upgrade",
    }


def test_the_publish_location_admits_the_largest_body_the_view_accepts_and_no_more():
    limit = re.search(r"^        client_max_body_size (\d+)k;$", location("/notify/publish/"), re.M)
    assert limit is not None, "location = /notify/publish/ should set client_max_body_size"
    assert int(limit[1]) * 1024 == DEFAULTS["MAX_PAYLOAD_BYTES"] + ENVELOPE_ALLOWANCE


# -- nginx alone ------------------------------------------------------------------------


def test_tls_with_http2_a_redirect_from_http_and_static_files_from_disk(
    start_nginx: StartNginx,
):
    nginx = start_nginx([free_port(), free_port()])  # no process needed

    context = nginx.tls
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", nginx.https_port)) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.selected_alpn_protocol() == "h2"

    redirect = httpx.get(f"http://127.0.0.1:{nginx.http_port}/notify/?a=1")
    assert redirect.status_code == 301
    assert redirect.headers["Location"] == "https://127.0.0.1/notify/?a=1"

    for path, source in [
        ("notify/notify.js", ROOT / "notify" / "static" / "notify" / "notify.js"),
        ("demo.css", ROOT / "static" / "demo.css"),
    ]:
        response = nginx.get(f"/static/{path}")
        assert response.status_code == 200
        assert response.content == source.read_bytes()
        assert "X-Upstream" not in response.headers  # nginx's own answer
        assert response.headers["Cache-Control"] == "max-age=604800"
    assert nginx.get("/static/nothing.js").status_code == 404


# -- streams through nginx --------------------------------------------------------------


def open_on_every_process(deployment: Deployment) -> dict[str, SSEClient]:
    """One stream per process, keyed by the process; nginx takes turns (round robin)."""
    streams: dict[str, SSEClient] = {}
    for _ in range(2 * len(deployment.servers)):
        client = deployment.nginx.stream()
        upstream = client.response.headers["X-Upstream"]
        if upstream in streams:
            client.close()
        else:
            streams[upstream] = client
        if set(streams) == deployment.upstreams:
            break
    assert set(streams) == deployment.upstreams
    return streams


def test_an_event_published_through_one_process_reaches_streams_on_every_process(
    deploy: Deploy,
):
    deployment = deploy()
    streams = open_on_every_process(deployment)
    try:
        response = httpx.post(
            deployment.nginx.url("/notify/publish/"),
            json={"channel": "orders", "data": {"via": "nginx"}},
            headers={"Authorization": f"Bearer {TOKEN}"},
            verify=deployment.nginx.tls,
        )
        assert response.status_code == 201, response.text
        assert response.headers["X-Upstream"] in deployment.upstreams
        for upstream, client in streams.items():
            event = client.next()
            assert event.id == str(response.json()["id"]), upstream
            assert payload(event)["data"] == {"via": "nginx"}
    finally:
        for client in streams.values():
            client.close()


def publish_head(length: int) -> bytes:
    """The head of a publish request declaring a body of ``length`` bytes."""
    return (
        f"POST /notify/publish/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def read_answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """The head and the body of one HTTP/1.1 answer with a Content-Length."""
    received = b""

    def more() -> bytes:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"the connection closed after {received!r}")
        return chunk

    while b"\r\n\r\n" not in received:
        received += more()
    head, _, body = received.partition(b"\r\n\r\n")
    length = re.search(rb"^Content-Length: (\d+)\r$", head + b"\r", re.M | re.I)
    assert length is not None, head
    while len(body) < int(length[1]):
        body += more()
    return head, body


def test_a_publish_body_over_the_limit_is_refused_by_nginx_before_it_is_sent(deploy: Deploy):
    # daphne would take in the whole body, and Django read it all, before the view's 413.
    deployment = deploy()
    nginx = deployment.nginx
    limit = DEFAULTS["MAX_PAYLOAD_BYTES"] + ENVELOPE_ALLOWANCE
    # The largest body the view accepts passes nginx.
    largest = json.dumps({"channel": "orders", "data": "x" * (DEFAULTS["MAX_PAYLOAD_BYTES"] - 2)})
    largest += " " * (limit - len(largest))
    response = httpx.post(
        nginx.url("/notify/publish/"),
        content=largest,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        verify=nginx.tls,
    )
    assert response.status_code == 201, response.text
    # One byte more is refused on the head alone: not a byte of the body is sent.
    for length in [limit + 1, 10**10]:
        with (
            socket.create_connection(("127.0.0.1", nginx.https_port), timeout=3) as raw,
            nginx.tls.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(publish_head(length))
            head, body = read_answer(tls)
        assert head.startswith(b"HTTP/1.1 413 "), head
        assert b"X-Upstream" not in head  # nginx's own answer: no process saw it
        assert b"Content-Type: application/json" in head
        error = json.loads(body)["error"]
        assert error == "the body is over 69,632 bytes, the limit of nginx for the publish API"
    # A chunked body, with no length to judge, is cut off at the limit.
    chunks = (b" " * 16384 for _ in range(32))
    response = httpx.post(
        nginx.url("/notify/publish/"),
        content=chunks,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        verify=nginx.tls,
    )
    assert response.status_code == 413
    assert "X-Upstream" not in response.headers
    assert response.json()["error"].startswith("the body is over 69,632 bytes")
    # Only the first request reached a process.
    posts = [server.output().count('"POST /notify/publish/"') for server in deployment.servers]
    assert sum(posts) == 1


def test_events_are_not_held_back(deploy: Deploy):
    """Each event reaches the client within 100 ms of its publish returning (the best of
    five: the machine may be busy). A buffering proxy holds it back until its buffer fills."""
    nginx = deploy().nginx
    delays: list[float] = []
    with nginx.stream() as client:
        for n in range(5):
            event = notify.publish("orders", {"n": n})
            published = time.monotonic()
            assert client.next().id == str(event.id)
            delays.append(time.monotonic() - published)
    assert min(delays) < 0.1, [f"{delay * 1000:.0f} ms" for delay in delays]


def test_heartbeats_pass_through_and_keep_the_stream_open_past_the_read_timeout(
    deploy: Deploy,
):
    # Heartbeats every 0.5 s; this nginx gives up on a silent process after 1 s.
    nginx = deploy(
        in_location("/notify/stream/", "proxy_read_timeout 60s;", "proxy_read_timeout 1s;"),
        HEARTBEAT_SECONDS=0.5,
    ).nginx
    arrivals: list[float] = []
    with RawStream(nginx) as stream:
        started = time.monotonic()
        for chunk in stream.chunks:
            arrivals += [time.monotonic() - started] * chunk.count(b": heartbeat\n\n")
            if len(arrivals) == 4:
                break
    # One at a time, half a second apart: not held back and sent together.
    assert len(arrivals) == 4, "the stream ended"
    assert arrivals[-1] - arrivals[0] > 1.2, arrivals


def test_a_client_that_resumes_with_its_last_event_id_gets_what_it_missed(deploy: Deploy):
    deployment = deploy()
    nginx = deployment.nginx
    with nginx.stream() as client:
        seen = notify.publish("orders", {"n": "seen"})
        assert client.next().id == str(seen.id)
        first = client.response.headers["X-Upstream"]
    missed = [notify.publish("orders", {"n": n}) for n in range(3)]

    with nginx.stream(last_event_id=str(seen.id)) as client:
        # nginx passes the header on, to the other process this time.
        assert client.response.headers["X-Upstream"] in deployment.upstreams - {first}
        blocks = client.until(lambda event: event.event == "notify.catchup-end")
        assert [e.id for e in blocks if e.event == "message"] == [str(e.id) for e in missed]
        live = notify.publish("orders", {"n": "live"})
        assert client.next().id == str(live.id)


def test_streams_are_counted_per_client_address_over_every_process(deploy: Deploy):
    """nginx sends the client's address in X-Forwarded-For, daphne --proxy-headers makes it
    the stream's, so MAX_STREAMS_PER_IP counts browsers rather than nginx; and a client
    cannot put an address of its own in the header."""
    nginx = deploy(MAX_STREAMS_PER_IP=1).nginx
    with nginx.stream(), RawStream(nginx, source="127.0.0.2") as other:
        assert other.response.status_code == 200  # another address: another client
        other.read_until(b"event: notify.open")
        spoofed = {"X-Forwarded-For": "192.0.2.1"}
        with RawStream(nginx, source="127.0.0.2", headers=spoofed) as again:
            assert again.response.status_code == 429
            assert b"this address" in again.response.read()


def test_the_units_command_serves_streams_and_drains_on_sigterm(
    transactional_db: None, redis_url: str, start_nginx: StartNginx, tmp_path: Path
):
    """The unit's ExecStart, on the tests' application, behind nginx. SIGTERM, which
    ``systemctl stop`` sends, ends the stream with a short ``retry:``, and the process exits
    well within the unit's TimeoutStopSec."""
    port = free_port()
    executable, *args = shlex.split(unit_command().replace("%i", str(port)))
    assert executable == "/srv/notify/venv/bin/daphne"
    args = [arg.replace("project.asgi:", "tests.asgi:") for arg in args]
    with (tmp_path / "daphne.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "daphne", *args],
            cwd=ROOT,
            env=server_env(redis_url, HEARTBEAT_SECONDS=1),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, process=process)
        with RawStream(start_nginx([port])) as stream:
            stream.read_until(b"event: notify.open")
            process.terminate()
            stopping = time.monotonic()
            last = re.search(rb"retry: (\d+)\n\n$", stream.read_to_end())
        assert last is not None
        assert shutdown.RECONNECT_MIN_MS <= int(last[1]) <= shutdown.RECONNECT_MAX_MS
        timeout = re.search(r"^TimeoutStopSec=(\d+)$", UNIT.read_text(), re.M)
        assert timeout is not None
        assert process.wait(timeout=int(timeout[1])) == 0
        assert time.monotonic() - stopping < shutdown.DRAIN_SECONDS + 1.5
    finally:
        stop_process(process)


def test_a_process_that_stops_sends_its_clients_to_the_others(deploy: Deploy):
    """A rolling restart, one process: its stream ends with a short ``retry:``, the client
    resumes through nginx on the other process and misses nothing, and nginx gives new
    streams to the process still up."""
    deployment = deploy()
    nginx = deployment.nginx
    with nginx.stream() as client:
        stopping = next(
            server
            for server in deployment.servers
            if f"127.0.0.1:{server.port}" == client.response.headers["X-Upstream"]
        )
        stopping.process.terminate()
        with pytest.raises(EOFError):
            client.next()
        assert client.retry is not None
        assert shutdown.RECONNECT_MIN_MS <= client.retry <= shutdown.RECONNECT_MAX_MS
        cursor = client.last_id
    assert stopping.process.wait(timeout=10) == 0
    missed = notify.publish("orders", {"n": "while reconnecting"})

    remaining = deployment.upstreams - {f"127.0.0.1:{stopping.port}"}
    with nginx.stream(last_event_id=cursor) as client:
        blocks = client.until(lambda event: event.event == "notify.catchup-end")
        assert [e.id for e in blocks if e.event == "message"] == [str(missed.id)]
    for _ in range(3):
        with nginx.stream() as client:
            # nginx names every process it tried: the stopped one refuses the connection.
            assert client.response.headers["X-Upstream"].split(", ")[-1] in remaining


# -- WebSocket streams through nginx ----------------------------------------------------


def is_catchup_end(message: dict[str, Any]) -> bool:
    return message.get("type") == CATCHUP_END


def test_websocket_events_are_not_held_back(deploy: Deploy):
    """As for the SSE stream: within 100 ms of the publish, the best of five. nginx relays an
    upgraded connection's frames as they come (``proxy_buffering`` does not apply)."""
    deployment = deploy()
    delays: list[float] = []
    with deployment.nginx.websocket() as client:
        assert upstream(client) in deployment.upstreams
        for n in range(5):
            event = notify.publish("orders", {"n": n})
            published = time.monotonic()
            message = client.next()
            delays.append(time.monotonic() - published)
            assert (message["id"], message["data"]) == (event.id, {"n": n})
    assert min(delays) < 0.1, [f"{delay * 1000:.0f} ms" for delay in delays]


def test_daphnes_pings_keep_an_idle_websocket_open_past_the_read_timeout(deploy: Deploy):
    # daphne looks every 2 s, so --ping-interval 1 pings every 2 s; this nginx gives up on a
    # silent process after 4 s; the client sends no ping of its own.
    nginx = deploy(
        in_location("/notify/ws/", "proxy_read_timeout 60s;", "proxy_read_timeout 4s;"),
        server_args=["--ping-interval", "1"],
    ).nginx
    with nginx.websocket() as client:
        time.sleep(6)
        event = notify.publish("orders", {"n": "after 6 s"})
        assert client.next()["id"] == event.id


def test_a_websocket_client_that_resumes_from_its_cursor_gets_what_it_missed(
    deploy: Deploy,
):
    deployment = deploy()
    nginx = deployment.nginx
    with nginx.websocket() as client:
        seen = notify.publish("orders", {"n": "seen"})
        assert client.next()["id"] == seen.id
        first = upstream(client)
    missed = [notify.publish("orders", {"n": n}) for n in range(3)]

    with nginx.websocket(last_event_id=str(seen.id)) as client:
        # nginx passes the query string on, to the other process this time.
        assert upstream(client) in deployment.upstreams - {first}
        assert event_ids(client.until(is_catchup_end)) == [event.id for event in missed]
        live = notify.publish("orders", {"n": "live"})
        assert client.next()["id"] == live.id


def test_the_origin_check_refuses_other_sites_pages_through_nginx(deploy: Deploy):
    """nginx passes Origin on: a page of another site is refused at the handshake (the
    browser would send it the site's cookies); the site's own pages, the origins of
    CORS_ALLOWED_ORIGINS and clients that send no Origin (not browsers) are let in."""
    nginx = deploy(
        allowed_hosts=["127.0.0.1"], CORS_ALLOWED_ORIGINS=["https://app.example.com"]
    ).nginx
    with pytest.raises(InvalidStatus) as refused:
        nginx.websocket(origin="https://evil.example.com")
    assert refused.value.response.status_code == 403
    for origin in [nginx.origin, "https://app.example.com", None]:
        with nginx.websocket(origin=origin) as client:
            event = notify.publish("orders", {"origin": origin})
            assert client.next()["id"] == event.id, origin


def test_websocket_streams_are_counted_per_client_address_over_every_process(
    deploy: Deploy,
):
    """The WebSocket location sets X-Forwarded-For as the SSE one does: MAX_STREAMS_PER_IP
    counts browsers, not nginx, and a client cannot put an address of its own in it."""
    nginx = deploy(MAX_STREAMS_PER_IP=1).nginx
    with nginx.websocket(), nginx.websocket(source="127.0.0.2"):  # another address
        spoofed = {"X-Forwarded-For": "192.0.2.1"}
        with nginx.websocket_client(source="127.0.0.2", headers=spoofed) as again:
            assert again.ended().code == websocket.TOO_MANY
            error = again.received[-1]
            assert (error["type"], error["code"]) == (websocket.ERROR, websocket.TOO_MANY)
            assert "this address" in error["reason"]


def test_a_process_that_stops_sends_its_websocket_clients_to_the_others(deploy: Deploy):
    """A rolling restart, one process, over WebSockets: its stream gets a short
    ``notify.retry`` and is closed with the shutdown code, and the client resumes through
    nginx on the other process and misses nothing."""
    deployment = deploy()
    nginx = deployment.nginx
    with nginx.websocket() as client:
        seen = notify.publish("orders", {"n": "seen"})
        assert client.next()["id"] == seen.id
        stopping = deployment.server_at(upstream(client))
        stopping.process.terminate()
        assert client.ended().code == websocket.SHUTDOWN
        last = client.received[-1]
        assert last["type"] == websocket.RETRY
        assert shutdown.RECONNECT_MIN_MS <= last["retry"] <= shutdown.RECONNECT_MAX_MS
        resume_from = cursor(client)
    assert resume_from == str(seen.id)
    assert stopping.process.wait(timeout=10) == 0
    missed = notify.publish("orders", {"n": "while reconnecting"})

    remaining = deployment.upstreams - {f"127.0.0.1:{stopping.port}"}
    with nginx.websocket(last_event_id=resume_from) as client:
        # nginx names every process it tried: the stopped one refuses the connection.
        assert upstream(client).split(", ")[-1] in remaining
        assert event_ids(client.until(is_catchup_end)) == [missed.id]
        live = notify.publish("orders", {"n": "live"})
        assert client.next()["id"] == live.id


# Opens a WebSocket in a page; what it receives goes to ``received``, its close code too.
OPEN_WEBSOCKET = """url => {
    window.received = [];
    const socket = new WebSocket(url);
    socket.onmessage = message => received.push(JSON.parse(message.data));
    socket.onclose = close => received.push({closed: close.code});
}"""


# Last in the module: the ``chromium`` fixture lets the tests call the ORM while its event
# loop runs, until the module ends.
def test_a_browser_on_an_http2_page_opens_its_websocket_over_http11(
    deploy: Deploy, chromium: Browser
):
    """nginx does not offer WebSockets over HTTP/2 (RFC 8441: its SETTINGS frame has no
    ENABLE_CONNECT_PROTOCOL), so Chromium, on a page it loaded over HTTP/2, makes the
    handshake on an HTTP/1.1 connection of its own; the stream works. The browser sends
    its page's origin: the site's own is let in, another's refused."""
    nginx = deploy(allowed_hosts=["127.0.0.1"]).nginx
    stream = nginx.url(WS_STREAM, scheme="wss")
    context = chromium.new_context(ignore_https_errors=True)  # the test's own certificate
    try:
        page = context.new_page()
        page.goto(nginx.url("/static/demo.css"))
        navigation = "performance.getEntriesByType('navigation')[0].nextHopProtocol"
        assert page.evaluate(navigation) == "h2"
        page.evaluate(OPEN_WEBSOCKET, stream)
        page.wait_for_function("received.length >= 2")  # notify.retry, notify.open
        event = notify.publish("orders", {"from": "a browser"})
        page.wait_for_function("received.length >= 3")
        received = page.evaluate("received")

        # Another site's page (localhost is not in ALLOWED_HOSTS): refused at the handshake.
        foreign = context.new_page()
        foreign.goto(f"https://localhost:{nginx.https_port}/static/demo.css")
        foreign.evaluate(OPEN_WEBSOCKET, stream)
        foreign.wait_for_function("received.length >= 1")
        assert foreign.evaluate("received") == [{"closed": 1006}]  # no connection
    finally:
        context.close()
    assert [message.get("type") for message in received[:2]] == [websocket.RETRY, OPEN]
    assert received[2]["id"] == event.id
    handshake = (WS_STREAM, "HTTP/1.1", "101")
    # nginx logs a request as it ends: the WebSocket's, once the browser has closed it.
    deadline = time.monotonic() + 5
    while handshake not in (requests := logged_requests(nginx)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ("/static/demo.css", "HTTP/2.0", "200") in requests
    assert handshake in requests
    assert (WS_STREAM, "HTTP/1.1", "403") in requests


def logged_requests(nginx: Nginx) -> list[tuple[str, str, str]]:
    """(path, protocol, status) of each GET in nginx's access log."""
    return re.findall(r'"GET (\S+) (HTTP/[\d.]+)" (\d+)', nginx.access_log())
