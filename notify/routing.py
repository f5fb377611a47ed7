"""Routing the WebSocket stream with Channels::

    # yourproject/asgi.py
    from channels.routing import ProtocolTypeRouter
    from notify.asgi import NotifyASGIHandler
    from notify.routing import websocket_application

    application = ProtocolTypeRouter({
        "http": NotifyASGIHandler(django_application),
        "websocket": websocket_application(),
    })

``websocket_application()`` is Channels' ``AuthMiddlewareStack`` (the session's user, as
``request.user``) around a ``URLRouter`` of ``websocket_urlpatterns``, behind
``StreamOriginValidator``. A project with WebSocket routes of its own puts
``websocket_urlpatterns`` among them instead.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import ParseResult

from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.urls import URLPattern, path

from notify.conf import notify_settings
from notify.consumers import StreamConsumer

websocket_urlpatterns: list[URLPattern] = [
    path("notify/ws/", StreamConsumer.as_asgi(), name="notify-stream-ws"),
]


class StreamOriginValidator(OriginValidator):
    """Channels' origin check, letting in what the SSE stream lets read it: pages of the
    site's own hosts (``ALLOWED_HOSTS``, as ``AllowedHostsOriginValidator`` reads them) and
    of ``NOTIFY["CORS_ALLOWED_ORIGINS"]``. Another page's handshake is refused (403).

    A connection with no ``Origin`` header is let in, where Channels refuses it: browsers
    always send one, so it is not a page, and the check protects browsers' cookies from
    other sites' pages (cross-site WebSocket hijacking). A native client sends the cookies
    or tokens it holds itself, and is authorized like any other."""

    def __init__(self, application: Any) -> None:
        super().__init__(application, [])

    @property
    def allowed_origins(self) -> list[str]:
        # Read at every handshake: settings may change (tests, override_settings).
        hosts = list(settings.ALLOWED_HOSTS)
        if settings.DEBUG and not hosts:
            hosts = ["localhost", "127.0.0.1", "[::1]"]
        return [*hosts, *notify_settings.CORS_ALLOWED_ORIGINS]

    @allowed_origins.setter
    def allowed_origins(self, value: list[str]) -> None:
        """Set by OriginValidator.__init__; the property reads settings instead."""

    def valid_origin(self, parsed_origin: ParseResult | None) -> bool:
        if parsed_origin is None:
            return True
        return bool(self.validate_origin(parsed_origin))


def websocket_application(
    urlpatterns: list[URLPattern] | None = None, *, auth_middleware: bool = True
) -> Any:
    """The WebSocket side of a project's ``ProtocolTypeRouter``: the stream at
    ``/notify/ws/`` (or ``urlpatterns``), with the origin check and, unless
    ``auth_middleware`` is False, Channels' ``AuthMiddlewareStack``.

    Without the stack the consumer finds the user from the session cookie itself, as the
    SSE stream does: no lookup at all under ``allow_all``, none for a visitor without a
    session cookie under the default policy, and otherwise one call in the shared thread
    pool. The stack looks the user up on every handshake, in the one thread that
    ``database_sync_to_async`` gives every handshake of the process in turn. Measured, 500
    handshakes at once took about as long either way (1.5-1.8 s, the client included):
    keep the stack when the project's other consumers want ``scope["user"]``."""
    routes = URLRouter(websocket_urlpatterns if urlpatterns is None else urlpatterns)
    return StreamOriginValidator(AuthMiddlewareStack(routes) if auth_middleware else routes)
