"""``POST /notify/publish/``: publish one event over HTTP.

Two kinds of client may publish: a program outside the project, with
``Authorization: Bearer <token>`` where the token is one of ``NOTIFY["PUBLISH_TOKENS"]``; and
a logged-in user's browser, with the permission ``notify.add_event``, the session cookie and a
CSRF token. A request that presents a bearer token is judged by the token alone, whatever its
cookies: a program that means to use a token learns that it is wrong instead of publishing as
whoever's session it happens to carry.

The request is checked in this order, each step answering before the later ones run: the
method (405), the media type (415), the declared body size (413), the credentials (401, 403),
then the body (400, 413). Nothing is stored unless the answer is 201.

The view runs only once the whole body is in: daphne takes it in before the application runs,
and Django's ASGI handler reads all of it before any view, under every server. A 413 here
spares the parsing, not the upload; the limit that keeps a large body out is the proxy's
(``client_max_body_size`` in deploy/nginx.conf).
"""

from __future__ import annotations

import codecs
import hmac
import json
import sys
from typing import Any

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt

from notify import authorization, sse
from notify.api import prepare, publish_many
from notify.conf import notify_settings
from notify.views.responses import json_error, method_not_allowed

PERMISSION = "notify.add_event"
FIELDS = ("channel", "event", "data")
# What a body may hold besides the data: the channel, the type, the keys, some whitespace.
ENVELOPE_ALLOWANCE = 4096


# CSRF is checked in the view, for session requests only: a browser never attaches a bearer
# token by itself, so a request carrying one cannot be forged by another site.
@csrf_exempt
def publish(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return method_not_allowed(["POST"], "the publish API")
    media_type_problem = _media_type_problem(request)
    if media_type_problem:
        return json_error(415, media_type_problem)
    body_limit = notify_settings.MAX_PAYLOAD_BYTES + ENVELOPE_ALLOWANCE
    declared = _content_length(request)
    if declared is not None and declared > body_limit:
        return _body_too_large(f"{declared:,} bytes", body_limit)
    refusal = _refuse_credentials(request)
    if refusal is not None:
        return refusal
    # Read at most one byte past the limit: enough to tell that a body without a
    # Content-Length is too large, without a copy of all of it in memory (Django's handler
    # has spooled it, to a file past FILE_UPLOAD_MAX_MEMORY_SIZE).
    body = request.read(body_limit + 1)
    if len(body) > body_limit:
        return _body_too_large(f"more than {body_limit:,} bytes", body_limit)
    try:
        fields = _parse_fields(body)
        prepared = prepare(
            fields["channel"], fields.get("data"), event=fields.get("event", "message")
        )
    except ValidationError as exc:
        return json_error(413 if exc.code == "too_large" else 400, exc.messages[0])
    event = publish_many([prepared])[0]
    return JsonResponse(
        {
            "id": event.id,
            "channel": event.channel,
            "event": event.event,
            "created": sse.format_created(event.created),
        },
        status=201,
    )


def _media_type_problem(request: HttpRequest) -> str | None:
    if request.content_type != "application/json":
        shown = request.content_type or "none"
        return f"the body must be application/json, not {shown}"
    charset = request.content_params.get("charset")
    if charset is not None and _codec_name(charset) != "utf-8":
        return f"JSON is read as UTF-8; the body says it is {charset}"
    return None


def _codec_name(charset: str) -> str | None:
    try:
        return codecs.lookup(charset).name
    except LookupError:
        return None


def _content_length(request: HttpRequest) -> int | None:
    try:
        return int(request.META.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None


def _body_too_large(size: str, limit: int) -> JsonResponse:
    return json_error(
        413,
        f"the body is {size}; the limit is {limit:,} "
        f'(NOTIFY["MAX_PAYLOAD_BYTES"] plus {ENVELOPE_ALLOWANCE:,} for the rest)',
    )


def _refuse_credentials(request: HttpRequest) -> HttpResponse | None:
    """None when the request may publish, else the answer that refuses it."""
    # Other schemes are left alone: a site behind HTTP Basic authentication sends that
    # header with every request of a logged-in user too.
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        if _is_publish_token(token.strip()):
            return None
        return json_error(
            401,
            'the bearer token is not one of NOTIFY["PUBLISH_TOKENS"]',
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    user = authorization.request_user(request)
    if user is None or not user.is_authenticated:
        return json_error(
            401,
            "publishing needs a logged-in user with the permission "
            f"{PERMISSION}, or Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    csrf_failure = _CsrfCheck().process_view(request, None, (), {})
    if csrf_failure is not None:
        return csrf_failure
    if not user.has_perm(PERMISSION):
        return json_error(403, f"publishing needs the permission {PERMISSION}")
    return None


def _is_publish_token(presented: str) -> bool:
    given = presented.encode("utf-8", "surrogatepass")
    # Compared with every token, each in constant time, so that the answer's timing tells
    # neither which token came close nor how many there are before it.
    matches = [
        hmac.compare_digest(given, token.encode("utf-8", "surrogatepass"))
        for token in notify_settings.PUBLISH_TOKENS
    ]
    return bool(given) and any(matches)


class _CsrfCheck(CsrfViewMiddleware):
    """Django's CSRF check, answering a failure in JSON instead of the HTML failure page (as
    Django REST framework's ``SessionAuthentication`` does)."""

    def __init__(self) -> None:
        # Only process_view is used: there is no next handler to call.
        super().__init__(lambda request: None)

    def _reject(self, request: HttpRequest, reason: str) -> JsonResponse:
        return json_error(403, f"CSRF check failed: {reason}")


def _parse_fields(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(
            f"the body is not valid UTF-8 (byte {exc.start})", code="not_utf8"
        ) from exc
    try:
        fields = json.loads(text)
    except RecursionError as exc:
        raise ValidationError("the body is nested too deeply", code="too_deep") from exc
    except json.JSONDecodeError as exc:
        raise ValidationError(f"the body is not valid JSON: {exc}", code="not_json") from exc
    except ValueError as exc:  # Python refuses to convert such integers (CVE-2020-10735)
        raise ValidationError(
            f"the body holds an integer of more than {sys.get_int_max_str_digits()} digits",
            code="long_integer",
        ) from exc
    if not isinstance(fields, dict):
        raise ValidationError(
            'the body must be a JSON object like {"channel": "orders", "data": ...}, '
            f"not {type(fields).__name__}",
            code="not_object",
        )
    unknown = [key for key in fields if key not in FIELDS]
    if unknown:
        raise ValidationError(
            f'unknown key {json.dumps(unknown[0])}; the keys are "channel", "event" and "data"',
            code="unknown_key",
        )
    if "channel" not in fields:
        raise ValidationError('the body has no "channel"', code="no_channel")
    return fields
