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

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any
from urllib.parse import ParseResult, urlparse

from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.security.websocket import OriginValidator, WebsocketDenier
from django.conf import settings
from django.urls import URLPattern, path

from notify import cors
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
    or tokens it holds itself, and is authorized like any other.

    A browser sends its cookies with every handshake, and a page cannot ask it not to, where
    an ``EventSource`` sends them only when ``NOTIFY["CORS_ALLOW_CREDENTIALS"]`` lets it. So
    the setting is applied here: while it is off, the handshake of a page let in as one of
    ``CORS_ALLOWED_ORIGINS`` reaches the stream without its cookies, as a visitor, which is
    what the SSE stream gives that page. And ``"*"`` among them matches no origin while it
    is on (``notify.cors.wildcard_allowed``)."""

    def __init__(self, application: Any) -> None:
        super().__init__(application, [])

    @property
    def own_hosts(self) -> list[str]:
        # Read at every handshake: settings may change (tests, override_settings).
        hosts = list(settings.ALLOWED_HOSTS)
        if settings.DEBUG and not hosts:
            hosts = ["localhost", "127.0.0.1", "[::1]"]
        return hosts

    @property
    def allowed_origins(self) -> list[str]:
        cross_origins = [o for o in notify_settings.CORS_ALLOWED_ORIGINS if o != "*"]
        wildcard = ["*"] if cors.wildcard_allowed() else []
        return [*self.own_hosts, *cross_origins, *wildcard]

    @allowed_origins.setter
    def allowed_origins(self, value: list[str]) -> None:
        """Set by OriginValidator.__init__; the property reads settings instead."""

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        parsed_origin = _parsed_origin(scope)
        if not self.valid_origin(parsed_origin):
            await WebsocketDenier()(scope, receive, send)
            return
        if (
            parsed_origin is not None
            and not notify_settings.CORS_ALLOW_CREDENTIALS
            and not self.is_own_host(parsed_origin)
        ):
            headers = [(name, value) for name, value in scope["headers"] if name != b"cookie"]
            scope = {**scope, "headers": headers}
        await self.application(scope, receive, send)

    def valid_origin(self, parsed_origin: ParseResult | None) -> bool:
        if parsed_origin is None:
            return True
        return bool(self.validate_origin(parsed_origin))

    def is_own_host(self, parsed_origin: ParseResult) -> bool:
        return any(
            pattern == "*" or self.match_allowed_origin(parsed_origin, pattern)
            for pattern in self.own_hosts
        )


def _parsed_origin(scope: MutableMapping[str, Any]) -> ParseResult | None:
    """The handshake's ``Origin`` (the last, if several), as Channels' ``OriginValidator``
    reads it."""
    parsed = None
    for name, value in scope.get("headers", []):
        if name == b"origin":
            parsed = urlparse(bytes(value).decode("latin-1"))
    return parsed


class TicketMiddleware:
    """Takes the stream's ``Ticket`` (``notify.hub``) before the middleware inside it looks
    up the user, and hands it to the consumer in the scope.

    Why: Channels' ``AuthMiddlewareStack`` reads the session before the consumer runs. A
    revocation stored while it does (a logout at that moment) would otherwise reach the hub
    before the stream could be found by it, and the stream would live on with its user's
    old rights. Put it outside any middleware that looks up the user; ``websocket_application``
    does.

    ``streams``: the routes of the stream among those inside (as given to Channels'
    ``URLRouter``); only their connections take a ticket, which is held until the stream
    joins the hub. None: every connection takes one, for a stack that routes nothing else.
    (A ticket held by a long-lived connection of another consumer would collect every
    revocation for as long as it lives.)"""

    def __init__(self, application: Any, streams: Sequence[URLPattern] | None = None) -> None:
        self.application = application
        self.streams = None if streams is None else list(streams)

    def _is_stream(self, scope: Any) -> bool:
        if self.streams is None:
            return True
        # Matched as Channels' URLRouter matches it.
        path: str = scope.get("path", "")
        root_path: str = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]
        path = path.lstrip("/")
        return any(route.pattern.match(path) for route in self.streams)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not self._is_stream(scope):
            await self.application(scope, receive, send)
            return
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
    patterns = websocket_urlpatterns if urlpatterns is None else urlpatterns
    routes = URLRouter(patterns)
    if auth_middleware:
        streams = [pattern for pattern in patterns if _serves_streams(pattern)]
        routes = TicketMiddleware(AuthMiddlewareStack(routes), streams)
    return StreamOriginValidator(routes)


def _serves_streams(pattern: URLPattern) -> bool:
    # ``as_asgi()`` keeps the consumer's class on the application it returns.
    consumer = getattr(pattern.callback, "consumer_class", None)
    return isinstance(consumer, type) and issubclass(consumer, StreamConsumer)
