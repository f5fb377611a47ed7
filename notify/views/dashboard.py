"""``GET /notify/``: a page that watches the stream live — status, counters, how many streams
are open on each of its channels, a log that marks replayed events, a chart of events per
second — and, for users who may publish, a form that posts to the publish API.

The view only decides what the page is given; ``notify/dashboard.js`` does the rest in the
browser with ``notify/notify.js``.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_safe

from notify import authorization
from notify.audience import counts_or_unknown
from notify.conf import notify_settings
from notify.stream import DEFAULT_CHANNEL
from notify.views.publish import PERMISSION


@require_safe
def dashboard(request: HttpRequest) -> HttpResponse:
    user = authorization.request_user(request)
    wanted = [DEFAULT_CHANNEL]
    if user is not None and user.is_authenticated:
        wanted.append(f"user:{user.pk}")
    # Subscribing to a channel AUTHORIZE refuses would make the whole stream a 403.
    refused = authorization.refused(user, wanted)
    channels = [channel for channel in wanted if channel not in refused]
    can_publish = user is not None and user.has_perm(PERMISSION)
    config: dict[str, Any] = {
        "stream_url": reverse("notify:stream"),
        "channels": channels,
        "publish_url": reverse("notify:publish") if can_publish else None,
        "can_publish": can_publish,
        # The page asks again as often as the processes report (no sooner: nothing new).
        "presence_url": reverse("notify:presence"),
        "presence_seconds": notify_settings.PRESENCE_SECONDS,
    }
    # Rendered with the page, so that the counts show before the first refresh.
    listening = counts_or_unknown(channels) if channels else {}
    return render(
        request,
        "notify/dashboard.html",
        {
            "config": config,
            "channels": channels,
            "listening": list(listening.items()),
            "refused": refused,
            "can_publish": can_publish,
        },
    )
