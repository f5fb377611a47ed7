"""``GET /notify/history/?channel=a&channel=b&before=N&limit=50``: stored events, newest first.

The answer::

    {"events": [{"id", "channel", "event", "created", "data"}, ...],
     "next_before": N or null,
     "newest": M}

Each event is the object a stream carries on its ``data:`` line. ``next_before`` is the
``before`` of the next (older) page, null on the last one. ``newest`` is the newest id stored
when the page was read (0 when nothing is): a page that shows the list and then opens the
stream with ``lastEventId=newest`` misses nothing and sees nothing twice.

Channels are read as the stream reads them (``broadcast`` when none is named) and checked
against ``NOTIFY["AUTHORIZE"]`` like the stream's. A ``limit`` above ``MAX_LIMIT`` is refused
rather than cut down, so that a client never takes a short page for what it asked.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from notify import authorization
from notify.history import page as read_page
from notify.models import Event
from notify.sse import format_created
from notify.stream import parse_channels
from notify.validation import parse_cursor
from notify.views.responses import json_error, method_not_allowed

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


# Exempt so that CsrfViewMiddleware does not answer other methods with 403 before the view
# answers 405; the view changes nothing, whatever the method.
@csrf_exempt
def history(request: HttpRequest) -> HttpResponse:
    response = _answer(request)
    # Every answer depends on what is stored now (and on who asks).
    response["Cache-Control"] = "no-store"
    return response


def _answer(request: HttpRequest) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return method_not_allowed(["GET", "HEAD"], "the history API")
    try:
        channels = parse_channels(request.GET.getlist("channel"))
        before = _integer_param(request, "before")
        limit = _integer_param(request, "limit")
    except ValidationError as exc:
        return json_error(400, exc.messages[0])
    if limit is None:
        limit = DEFAULT_LIMIT
    elif not 1 <= limit <= MAX_LIMIT:
        return json_error(400, f"limit is {limit}; use 1 to {MAX_LIMIT}")
    refused = authorization.refused(authorization.request_user(request), channels)
    if refused:
        return json_error(403, authorization.describe_refusal(refused), channels=refused)
    page = read_page(channels, before, limit)
    return JsonResponse(
        {
            "events": [_envelope(event) for event in page.events],
            "next_before": page.next_before,
            # As the stream's notify.open does on an empty history.
            "newest": page.newest or 0,
        }
    )


def _integer_param(request: HttpRequest, name: str) -> int | None:
    """The query parameter ``name`` as a non-negative integer, None when absent."""
    values = request.GET.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise ValidationError(f"{name} is given {len(values)} times", code="repeated")
    value = parse_cursor(values[0])
    if value is None:
        raise ValidationError(
            f'{name} "{values[0]}" is not a non-negative integer of at most 20 digits',
            code="not_integer",
        )
    return value


def _envelope(event: Event) -> dict[str, object]:
    return {
        "id": event.id,
        "channel": event.channel,
        "event": event.event,
        "created": format_created(event.created),
        "data": event.data,
    }
