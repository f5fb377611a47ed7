"""The fallback view: the stream served through Django's own ASGI handler.

A project that does not wrap its ASGI application with ``NotifyASGIHandler`` still gets the
stream, from ``notify.views.stream``. ``TestViewStream`` runs the whole contract of
tests/test_asgi.py (``StreamContract``) against such a project (tests/asgi_unwrapped.py).
"""

from __future__ import annotations

import httpx

import notify
from tests.conftest import SSEClient, payload
from tests.test_asgi import RawStream, StreamContract, stream_url


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
