"""The stream's URL. Normally ``notify.asgi.NotifyASGIHandler`` answers this URL before
Django sees the request; this view serves the stream when the project's ASGI application
is not wrapped (it works, but Django's handler then keeps a thread per open stream)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from urllib.parse import parse_qsl

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from notify import authorization, cors, limits, metrics, shutdown
from notify.conf import notify_settings
from notify.db import db_call
from notify.hub import Hub, HubUnavailable, Subscriber, get_hub
from notify.stream import HEADERS, EventStream, first_frame, parse_stream_request

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
    access = await _check_access(request, stream_request.channels)
    if access.refused:
        reason = authorization.describe_refusal(access.refused)
        return HttpResponse(reason + "\n", status=403, content_type="text/plain")
    hub = get_hub()
    try:
        subscriber = await hub.subscribe(stream_request.channels, access.user_id)
    except HubUnavailable as exc:
        response = HttpResponse(
            f"Streams are unavailable: {exc}.\n", status=503, content_type="text/plain"
        )
        response["Retry-After"] = "5"
        return response
    metrics.STREAMS_OPENED.labels(transport="sse").inc()
    # GZipMiddleware would buffer and compress the stream: it only compresses for clients
    # that accept gzip, so make this request not accept it.
    request.META["HTTP_ACCEPT_ENCODING"] = ""
    return _stream_headers(
        StreamingHttpResponse(_body(hub, subscriber, stream_request.cursor)), origin
    )


# Marks the view for notify.asgi.is_stream_path, which serves its URL before Django.
stream.notify_stream = True


def _stream_headers(response: HttpResponseBase, origin: str | None) -> HttpResponseBase:
    for name, value in [*HEADERS, *cors.response_headers(origin)]:
        response[name] = value
    return response


async def _check_access(request: HttpRequest, channels: Sequence[str]) -> authorization.Access:
    if authorization.is_open():
        return authorization.Access([], None)
    # request.user is lazy: its session and user are read in this thread-pool call, with the
    # policy's own queries, and the connection is closed before streaming starts.
    return await db_call(lambda: authorization.check(authorization.request_user(request), channels))


async def _body(hub: Hub, subscriber: Subscriber, cursor: str | None) -> AsyncIterator[bytes]:
    # No notify.backpressure here: Django's handler does not expose the server's ``send``.
    # Under daphne a client that stops reading is then never paused nor closed as too slow,
    # and daphne buffers what it is sent without limit: another reason to wrap the ASGI
    # application with NotifyASGIHandler.
    try:
        yield first_frame(notify_settings.RETRY_MS, cursor)
        async for chunk in EventStream(subscriber, cursor, limits.stream_lifetime()).body():
            yield chunk
    finally:
        hub.unsubscribe(subscriber)


def _warn_unwrapped() -> None:
    global _warned
    if not _warned:
        _warned = True
        logger.warning(
            "notify: a stream is served through Django's request handler, which holds a "
            "thread per open stream. Wrap the ASGI application with "
            "notify.asgi.NotifyASGIHandler (see the README)."
        )
