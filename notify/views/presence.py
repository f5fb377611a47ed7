"""``GET /notify/presence/?channel=a&channel=b``: how many streams are open now on each
channel, over every server process (``notify.audience.stream_counts``).

The answer maps each channel asked for to its count, or to null when the broker cannot tell
(Redis unreachable, or a broker that does not count), never to 0 for "unknown"::

    {"a": 3, "b": 0}

Channels are read as the stream reads them (``broadcast`` when none is named) and checked
against ``NOTIFY["AUTHORIZE"]`` like the stream's: a count tells who is listening on a
channel, so only those who may read it learn it. The figures lag by up to
``PRESENCE_SECONDS``; asking more often than that tells nothing new.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from notify import authorization
from notify.audience import counts_or_unknown
from notify.stream import parse_channels
from notify.views.responses import json_error, method_not_allowed


# Exempt so that CsrfViewMiddleware does not answer other methods with 403 before the view
# answers 405; the view changes nothing, whatever the method.
@csrf_exempt
def presence(request: HttpRequest) -> HttpResponse:
    response = _answer(request)
    # Every answer depends on the streams open now (and on who asks).
    response["Cache-Control"] = "no-store"
    return response


def _answer(request: HttpRequest) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return method_not_allowed(["GET", "HEAD"], "the presence API")
    try:
        channels = parse_channels(request.GET.getlist("channel"))
    except ValidationError as exc:
        return json_error(400, exc.messages[0])
    refused = authorization.refused(authorization.request_user(request), channels)
    if refused:
        return json_error(403, authorization.describe_refusal(refused), channels=refused)
    return JsonResponse(counts_or_unknown(channels))
