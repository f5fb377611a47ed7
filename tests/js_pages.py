"""Test-only pages for the browser tests of notify.js, served by the test servers.

The test settings install no staticfiles app, so ``/static/`` serves notify's own static
directory here (as ``runserver`` would). ``/tests/notify-js/`` is a blank page that loads
the module with ``{% notify_script %}``, imports it, exposes it as ``window.notify`` and
defines ``window.startClient(url, options)``, which makes ``window.client`` record every
hook call in ``window.log``.
"""

from pathlib import Path

from django.http import HttpRequest, HttpResponse
from django.template import engines
from django.urls import path, re_path
from django.views.static import serve

import notify

NOTIFY_STATIC = Path(notify.__file__).resolve().parent / "static"

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>notify.js</title>
<link rel="icon" href="data:,">
{% load notify %}{% notify_script %}
</head>
<body>
<script type="module">
import * as notify from "/static/notify/notify.js";
window.notify = notify;
window.streamUrl = document.querySelector("script[data-stream-url]").dataset.streamUrl;
// One client at a time, recording every hook call in window.log.
window.startClient = (url, options = {}) => {
  window.log = [];
  const record = (entry) => window.log.push({ at: performance.now(), ...entry });
  window.client = new notify.NotifyClient(url, {
    ...options,
    onEvent: (envelope, meta) => record({ kind: "event", envelope, ...meta }),
    onStatus: (state, info) => record({ kind: "status", state, info }),
    onCatchup: (phase, info) => record({ kind: "catchup", phase, info }),
    onReset: (info) => record({ kind: "reset", info }),
    onControl: (name, data, id) => record({ kind: "control", name, data, id }),
  });
  return window.client.status;
};
document.body.dataset.ready = "true";
</script>
</body>
</html>
"""


def render_page() -> str:
    return engines["django"].from_string(PAGE).render()


def notify_js_page(request: HttpRequest) -> HttpResponse:
    return HttpResponse(render_page())


urlpatterns = [
    re_path(r"^static/(?P<path>.*)$", serve, {"document_root": NOTIFY_STATIC}),
    path("tests/notify-js/", notify_js_page),
]
