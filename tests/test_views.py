"""The fallback view: the stream served through Django's own ASGI handler.

A project that does not wrap its ASGI application with ``NotifyASGIHandler`` still gets the
stream, from ``notify.views.stream``. ``TestViewStream`` runs the whole contract of
tests/test_asgi.py (``StreamContract``) against such a project (tests/asgi_unwrapped.py).
"""

from __future__ import annotations

import random
import socket
import struct
import time

import httpx

import notify
from tests.conftest import SSEClient, StartServer, payload
from tests.test_asgi import RawStream, StreamContract, stream_url, wait_until


class TestViewStream(StreamContract):
    """The contract, served by the view."""

    APP = "tests.asgi_unwrapped:application"


def test_gzip_middleware_does_not_compress_the_stream(start_server):
    server = start_server(app="tests.asgi_unwrapped:gzip_application")
    # The middleware is there: it compresses other responses.
    response = httpx.get(
        f"{server.url}/admin/login/", headers={"Accept-Encoding": "gzip"}, timeout=10
    )
    assert response.headers["Content-Encoding"] == "gzip"
    headers = {"Accept-Encoding": "gzip, deflate, br"}
    with RawStream(stream_url(server, "orders"), headers) as stream:
        assert stream.response.status_code == 200
        assert "Content-Encoding" not in stream.response.headers
        assert stream.response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert stream.read_chunk().startswith(b"retry: 3000\n\n")
        assert stream.next_event().event == "notify.open"
        event = notify.publish("orders", {"plain": "text"})
        got = stream.next_event()
    assert got.id == str(event.id)
    assert got.data["data"] == {"plain": "text"}


def test_the_view_warns_that_it_holds_a_thread_per_stream(start_server):
    server = start_server(app="tests.asgi_unwrapped:application")
    with SSEClient(stream_url(server)) as client:
        assert client.next().event == "notify.open"
    warning = (
        "holds a thread per open stream. "
        "Wrap the ASGI application with notify.asgi.NotifyASGIHandler"
    )
    logged = server.output().count(warning)
    assert logged >= 1
    # Once per process, not once per stream.
    for _ in range(2):
        with SSEClient(stream_url(server)) as client:
            assert client.next().event == "notify.open"
    assert server.output().count(warning) == logged


def test_the_stream_works_after_other_requests(start_server):
    server = start_server(app="tests.asgi_unwrapped:application")
    assert httpx.get(f"{server.url}/admin/login/", timeout=10).status_code == 200
    with SSEClient(stream_url(server)) as client:
        client.next()
        event = notify.publish("broadcast", [1, 2, 3])
        assert payload(client.next())["data"] == [1, 2, 3]
        assert client.last_id == str(event.id)


def statuses(url: str, count: int) -> tuple[list[int], list[httpx.Response]]:
    """Open ``count`` streams of ``url`` one after the other, keeping those let in open:
    their statuses, and the open responses (close them)."""
    client = httpx.Client(timeout=10)
    opened, codes = [], []
    for _ in range(count):
        response = client.send(client.build_request("GET", url), stream=True)
        codes.append(response.status_code)
        if response.status_code == 200:
            opened.append(response)
        else:
            response.close()
    return codes, opened


def test_the_view_applies_the_stream_limits(start_server: StartServer):
    """The README promises 429 beyond MAX_STREAMS_PER_IP with no exception; the fallback
    view counted nothing."""
    server = start_server(app="tests.asgi_unwrapped:application", MAX_STREAMS_PER_IP=2)
    codes, opened = statuses(stream_url(server, "orders"), 4)
    try:
        assert codes == [200, 200, 429, 429]
    finally:
        for response in opened:
            response.close()


def open_stream_count(server) -> int:
    return httpx.get(f"{server.url}/notify/health/", timeout=10).json()["streams"]


def test_clients_that_leave_before_the_body_starts_leave_nothing_behind(start_server):
    """A client that leaves after the view returned, before the server first reads the
    body (here while a middleware awaits with the response): the stream's subscriber and
    count must not stay in the hub, in presence and in the gauge, nor hold the address's
    slots. (daphne itself cancels a request whose client it lost only after 10 s.)"""
    server = start_server(
        app="tests.asgi_unwrapped:slow_response_application", MAX_STREAMS_PER_IP=2
    )
    request = f"GET /notify/stream/?channel=orders HTTP/1.1\r\nHost: {server.port}\r\n\r\n"
    for _ in range(6):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(request.encode())
            time.sleep(0.15)  # the view has returned; the middleware holds the response
            # RST rather than FIN: gone at once, as a browser tab that is closed.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert wait_until(lambda: open_stream_count(server) == 0, 3.0), open_stream_count(server)
    codes, opened = statuses(stream_url(server, "orders"), 3)
    try:
        assert codes == [200, 200, 429]
    finally:
        for response in opened:
            response.close()


def test_clients_that_leave_while_a_new_process_starts_its_hub_leave_no_stream(start_server):
    """The first streams of a process wait for its hub to read where it starts; clients that
    leave meanwhile must not leave streams running for nobody (uvicorn drops writes to a
    gone client silently, so nothing else would end them)."""
    leaked = []
    for attempt in range(4):
        server = start_server(kind="uvicorn", app="tests.asgi_unwrapped:application")
        rng = random.Random(attempt)
        sockets = []
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"GET /notify/stream/?channel=a HTTP/1.1\r\nHost: x\r\n\r\n")
            sockets.append(sock)
        for sock in sockets:
            time.sleep(rng.uniform(0, 0.004))
            sock.close()
        wait_until(lambda server=server: open_stream_count(server) == 0, 3.0)
        leaked.append(open_stream_count(server))
        server.stop()
    assert leaked == [0, 0, 0, 0]
