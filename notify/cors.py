"""Cross-origin streams: the CORS headers of the stream's responses.

A page of another origin may open a stream only when that origin is one of
``NOTIFY["CORS_ALLOWED_ORIGINS"]``: its responses then name that origin (and allow cookies
when ``NOTIFY["CORS_ALLOW_CREDENTIALS"]``); any other origin gets no CORS header at all, so
its browser withholds the stream from the page. The stream and its fallback view share this
module; it reads only notify's settings.
"""

from __future__ import annotations

from notify.conf import notify_settings

ALLOWED_METHODS = "GET"
# The headers a client may send: the cursor, which the browser sets on reconnecting, and a
# token for projects whose policy reads one.
ALLOWED_HEADERS = "Last-Event-ID, Authorization"
# How long a browser may reuse a preflight's answer (Chromium keeps it two hours at most).
MAX_AGE_SECONDS = 3600

Headers = list[tuple[str, str]]


def is_allowed(origin: str | None) -> bool:
    """Whether a page of ``origin`` (the request's ``Origin`` header) may read the stream."""
    allowed = notify_settings.CORS_ALLOWED_ORIGINS
    return origin is not None and (origin in allowed or "*" in allowed)


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
