"""Cross-origin streams: the CORS headers of the stream's responses.

A page of another origin may open a stream only when that origin is one of
``NOTIFY["CORS_ALLOWED_ORIGINS"]``: its responses then name that origin (and allow cookies
when ``NOTIFY["CORS_ALLOW_CREDENTIALS"]``); any other origin gets no CORS header at all, so
its browser withholds the stream from the page. The stream and its fallback view share this
module, and the WebSocket's origin check (``notify.routing``) reads ``"*"`` through it; it
reads only notify's settings.

``"*"`` lets every origin read the stream, which is safe only without credentials: with
``NOTIFY["CORS_ALLOW_CREDENTIALS"]`` on as well, any site could read the streams of whoever
visits it, as them. The system check ``notify.E011`` reports that, but servers such as daphne
run no checks: here ``"*"`` then matches no origin, and an error says why, once per process.
"""

from __future__ import annotations

from notify.conf import notify_settings, report_misconfiguration

ALLOWED_METHODS = "GET"
# The headers a client may send: the cursor, which the browser sets on reconnecting, and a
# token for projects whose policy reads one.
ALLOWED_HEADERS = "Last-Event-ID, Authorization"
# How long a browser may reuse a preflight's answer (Chromium keeps it two hours at most).
MAX_AGE_SECONDS = 3600

Headers = list[tuple[str, str]]


def wildcard_allowed() -> bool:
    """Whether ``NOTIFY["CORS_ALLOWED_ORIGINS"]`` has ``"*"`` and may use it: only while
    ``NOTIFY["CORS_ALLOW_CREDENTIALS"]`` is off (``notify.E011``)."""
    if "*" not in notify_settings.CORS_ALLOWED_ORIGINS:
        return False
    if not notify_settings.CORS_ALLOW_CREDENTIALS:
        return True
    report_misconfiguration(
        "notify.E011",
        'NOTIFY["CORS_ALLOWED_ORIGINS"] has "*" while NOTIFY["CORS_ALLOW_CREDENTIALS"] is '
        "true, which would let any site read the streams of your logged-in users: "
        '"*" matches no origin. List the origins you trust, or set '
        'NOTIFY["CORS_ALLOW_CREDENTIALS"] = False',
    )
    return False


def is_allowed(origin: str | None) -> bool:
    """Whether a page of ``origin`` (the request's ``Origin`` header) may read the stream."""
    if origin is None or origin == "*":
        return False
    return origin in notify_settings.CORS_ALLOWED_ORIGINS or wildcard_allowed()


def response_headers(origin: str | None) -> Headers:
    """The CORS headers of a stream response to a request from ``origin``."""
    if not notify_settings.CORS_ALLOWED_ORIGINS:
        return []
    # Whatever the origin, the answer depends on it: caches must key on it.
    headers = [("Vary", "Origin")]
    if is_allowed(origin):
        assert origin is not None
        headers.append(("Access-Control-Allow-Origin", origin))
        if notify_settings.CORS_ALLOW_CREDENTIALS:
            headers.append(("Access-Control-Allow-Credentials", "true"))
    return headers


def preflight_headers(origin: str | None) -> Headers | None:
    """The headers of the ``204`` answering an ``OPTIONS`` preflight from ``origin``; None
    when ``origin`` may not read the stream (the request is then a method not allowed)."""
    if not is_allowed(origin):
        return None
    return [
        *response_headers(origin),
        ("Access-Control-Allow-Methods", ALLOWED_METHODS),
        ("Access-Control-Allow-Headers", ALLOWED_HEADERS),
        ("Access-Control-Max-Age", str(MAX_AGE_SECONDS)),
    ]
