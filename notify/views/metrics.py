"""``GET /notify/metrics/``: this process's metrics (``notify.metrics``) in Prometheus's
text format.

Readable by active staff users (their session) and by ``Authorization: Bearer <token>`` with
``NOTIFY["METRICS_TOKEN"]``, for a Prometheus server. A request that presents a bearer token
is judged by the token alone, whatever its cookies (as the publish API does). Anyone else
gets a 403 with a plain-text reason.
"""

from __future__ import annotations

import hmac

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from notify import authorization
from notify.conf import notify_settings
from notify.metrics import REGISTRY


# Exempt so that CsrfViewMiddleware does not answer other methods with 403 before the view
# answers 405; the view changes nothing, whatever the method.
@csrf_exempt
@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    refusal = _refusal(request)
    if refusal is not None:
        response = HttpResponse(refusal + "\n", status=403, content_type="text/plain")
    else:
        response = HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response


def _refusal(request: HttpRequest) -> str | None:
    """None when the request may read the metrics, else why not."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        if _is_metrics_token(token.strip()):
            return None
        return 'The bearer token is not NOTIFY["METRICS_TOKEN"].'
    user = authorization.request_user(request)
    if getattr(user, "is_active", False) and getattr(user, "is_staff", False):
        return None
    return (
        "The metrics are for staff users, or for Authorization: Bearer <token> with "
        'NOTIFY["METRICS_TOKEN"].'
    )


def _is_metrics_token(presented: str) -> bool:
    expected = notify_settings.METRICS_TOKEN
    if not (expected and presented):
        return False
    # Constant time: the answer's timing does not tell how much of the token was right.
    return hmac.compare_digest(
        presented.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )
