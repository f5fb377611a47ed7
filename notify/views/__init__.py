"""notify's HTTP endpoints: the dashboard, the stream (served here only when the ASGI
application is not wrapped), the publish API and the history API. ``notify.urls`` routes
them."""

from notify.views.dashboard import dashboard
from notify.views.history import history
from notify.views.publish import publish
from notify.views.stream import stream

__all__ = ["dashboard", "history", "publish", "stream"]
