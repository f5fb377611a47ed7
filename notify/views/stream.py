"""The stream's URL. Normally ``notify.asgi.NotifyASGIHandler`` answers this URL before
Django sees the request; this view serves the stream when the project's ASGI application
is not wrapped (it works, but Django's handler then keeps a thread per open stream)."""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast
from urllib.parse import parse_qsl

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from notify import cors, limits, metrics, shutdown
from notify.admission import Admission, Refused, admit
from notify.conf import notify_settings
from notify.stream import HEADERS, EventStream, StreamRequest, first_frame, parse_stream_request

logger = logging.getLogger("notify.views")
_warned = False


# Exempt so that CsrfViewMiddleware does not answer other methods with 403 before the
# view answers 405; the view changes nothing, whatever the method.
@csrf_exempt
async def stream(request: HttpRequest) -> HttpResponseBase:
    _warn_unwrapped()
    origin = request.headers.get("Origin")
    preflight = cors.preflight_headers(origin) if request.method == "OPTIONS" else None
    if preflight is not None:
        return HttpResponse(status=204, headers=dict(preflight))
    if request.method != "GET":
        response = HttpResponse(
            "Streams are read with GET.\n", status=405, content_type="text/plain"
        )
        response["Allow"] = "GET"
        return response
    try:
        stream_request = parse_stream_request(
            parse_qsl(request.META.get("QUERY_STRING", ""), keep_blank_values=True),
            request.headers.get("Last-Event-ID"),
        )
    except ValidationError as exc:
        return HttpResponse(exc.messages[0] + "\n", status=400, content_type="text/plain")
    shutdown.watch()
    if shutdown.draining():
        # A stream of its first frame alone (``retry:``, and ``id:`` so that the client
        # keeps its cursor): any status other than 200 would make EventSource give up for
        # good; this makes it reconnect, to another process.
        body = first_frame(shutdown.reconnect_delay(), stream_request.cursor)
        return _stream_headers(HttpResponse(body), origin)
    try:
        admission = await admit(_scope(request), stream_request.channels)
    except Refused as refusal:
        response = HttpResponse(
            refusal.reason + "\n", status=refusal.status, content_type="text/plain"
        )
        if refusal.retry_after is not None:
            response["Retry-After"] = str(refusal.retry_after)
        return response
    try:
        metrics.STREAMS_OPENED.labels(transport="sse").inc()
        # GZipMiddleware would buffer and compress the stream: it only compresses for
        # clients that accept gzip, so make this request not accept it.
        request.META["HTTP_ACCEPT_ENCODING"] = ""
        response = StreamResponse(admission, _body(admission, stream_request))
        return _stream_headers(response, origin)
    except BaseException:
        admission.close()
        raise


# Marks the view for notify.asgi.is_stream_path, which serves its URL before Django.
stream.notify_stream = True


def _stream_headers(response: HttpResponseBase, origin: str | None) -> HttpResponseBase:
    for name, value in [*HEADERS, *cors.response_headers(origin)]:
        response[name] = value
    return response


def _scope(request: HttpRequest) -> Mapping[str, Any]:
    """The ASGI scope of ``request``, which admission reads (the session cookie, the
    client's address) as the ASGI handler does; a scope of those two under WSGI."""
    scope = getattr(request, "scope", None)
    if scope is not None:
        return cast(Mapping[str, Any], scope)
    cookie = request.META.get("HTTP_COOKIE", "")
    return {
        "headers": [(b"cookie", cookie.encode("latin-1"))] if cookie else [],
        "client": (request.META.get("REMOTE_ADDR", "unknown"), 0),
    }


class StreamResponse(StreamingHttpResponse):
    """A stream's response, which closes the stream's admission whichever comes first:
    the body's end, the server closing the response, or the response being dropped unread.

    The body joins the hub only when the server first reads it, from the task that streams
    (which need not be the view's: a sync middleware runs the view in another task). A
    client that leaves before that never starts the body, whose clean-up then never runs:
    its count and ticket are given back here instead."""

    def __init__(self, admission: Admission, streaming_content: AsyncIterator[bytes]) -> None:
        super().__init__(streaming_content)
        self.admission = admission
        weakref.finalize(self, _close_in_loop, admission)

    def close(self) -> None:
        try:
            super().close()
        finally:
            # Django calls close() from a thread of its own (sync_to_async).
            _close_in_loop(self.admission)


def _close_in_loop(admission: Admission) -> None:
    # Admission.close() gives back a count through the loop's tasks: it runs there.
    with contextlib.suppress(RuntimeError):  # the loop is closed: nothing is left to free
        admission.hub.loop.call_soon_threadsafe(admission.close)


async def _body(admission: Admission, request: StreamRequest) -> AsyncIterator[bytes]:
    # No notify.backpressure here: Django's handler does not expose the server's ``send``.
    # Under daphne a client that stops reading is then never paused nor closed as too slow,
    # and daphne buffers what it is sent without limit: another reason to wrap the ASGI
    # application with NotifyASGIHandler.
    if admission.closed:
        return
    try:
        subscriber = admission.attach(request.channels)
        yield first_frame(notify_settings.RETRY_MS, request.cursor)
        stream = EventStream(subscriber, request.cursor, limits.stream_lifetime())
        async for chunk in stream.body():
            yield chunk
    finally:
        admission.close()


def _warn_unwrapped() -> None:
    global _warned
    if not _warned:
        _warned = True
        logger.warning(
            "notify: a stream is served through Django's request handler, which holds a "
            "thread per open stream. Wrap the ASGI application with "
            "notify.asgi.NotifyASGIHandler (see the README)."
        )
