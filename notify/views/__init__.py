"""notify's HTTP endpoints: the dashboard, the stream (served here only when the ASGI
application is not wrapped), the publish API, the history and presence APIs, and the health
and metrics endpoints for operators. ``notify.urls`` routes them."""

from notify.views.dashboard import dashboard
from notify.views.health import health
from notify.views.history import history
from notify.views.metrics import metrics
from notify.views.presence import presence
from notify.views.publish import publish
from notify.views.stream import stream

__all__ = ["dashboard", "health", "history", "metrics", "presence", "publish", "stream"]
