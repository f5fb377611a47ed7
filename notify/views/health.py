"""``GET /notify/health/``: whether this process can serve, for load balancers and probes.

``200 {"database": "ok", "broker": "ok", "streams": N}``, N being the streams open now in
this process; ``503`` with the same keys when the database or the broker is down, naming it
``"down: <reason>"`` (see ``notify.health``). Open to anyone: it tells nothing but that. Never
cached. Answers within ``notify.health.TIMEOUT_SECONDS``, however the database is down.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe

from notify.health import check


# Exempt so that CsrfViewMiddleware does not answer other methods with 403 before the view
# answers 405; the view changes nothing, whatever the method.
@csrf_exempt
@require_safe
async def health(request: HttpRequest) -> HttpResponse:
    report = await check()
    response = JsonResponse(
        {"database": report.database, "broker": report.broker, "streams": report.streams},
        status=200 if report.ok else 503,
    )
    response["Cache-Control"] = "no-store"
    return response
