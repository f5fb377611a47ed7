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
``TicketMiddleware`` and ``StreamOriginValidator``. A project with WebSocket routes of its
own passes them as ``urlpatterns``, with ``websocket_urlpatterns`` among them; a project
that builds its own stack puts ``TicketMiddleware`` outside whatever looks up the user.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import ParseResult

from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.urls import URLPattern, path

from notify.admission import TICKET_SCOPE_KEY
from notify.conf import notify_settings
from notify.consumers import StreamConsumer
from notify.hub import HubUnavailable, get_hub

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


class TicketMiddleware:
    """Takes the stream's ``Ticket`` (``notify.hub``) before the middleware inside it looks
    up the user, and hands it to the consumer in the scope.

    Why: Channels' ``AuthMiddlewareStack`` reads the session before the consumer runs. A
    revocation stored while it does (a logout at that moment) would otherwise reach the hub
    before the stream could be found by it, and the stream would live on with its user's
    old rights. Put it outside any middleware that looks up the user; ``websocket_application``
    does."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        hub = get_hub()
        try:
            await hub.until_ready()
        except HubUnavailable:
            # The consumer answers 4503 at once rather than wait for the hub again.
            await self.application({**scope, TICKET_SCOPE_KEY: None}, receive, send)
            return
        ticket = hub.ticket()
        try:
            await self.application({**scope, TICKET_SCOPE_KEY: ticket}, receive, send)
        finally:
            ticket.close()


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
    if auth_middleware:
        routes = TicketMiddleware(AuthMiddlewareStack(routes))
    return StreamOriginValidator(routes)
