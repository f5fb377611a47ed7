"""Letting a stream in: who its user is, whether it may read its channels, whether its
owner has streams to spare, and its place in the hub. Shared by both transports (the SSE
stream of ``notify.asgi`` and the WebSocket of ``notify.consumers``), so that the choice of
transport changes nothing of this.

An open stream holds no thread and no database connection: what needs the database (the
session, the user, a policy that queries) runs in one thread-pool call before streaming.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from importlib import import_module
from typing import Any

from django.apps import apps
from django.conf import settings
from django.contrib.auth import get_user
from django.http import HttpRequest
from django.http.cookie import parse_cookie

from notify import authorization, limits
from notify.db import db_call
from notify.hub import Hub, HubUnavailable, Subscriber, Ticket, get_hub
from notify.stream import StreamRequest

logger = logging.getLogger("notify.admission")

# What a client refused for want of a database is told to wait, in seconds.
UNAVAILABLE_RETRY_AFTER = 5


class Refused(Exception):
    """The stream may not open: ``status`` is the HTTP status of the SSE answer (the
    WebSocket closes with the matching code, ``notify.websocket.REFUSAL_CODES``)."""

    def __init__(self, status: int, reason: str, retry_after: int | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


#: The scope key under which ``notify.routing``'s middleware hands the consumer the ticket
#: it took before Channels' middleware looked up the user (None: the hub was unavailable).
TICKET_SCOPE_KEY = "notify.ticket"


class Admission:
    """A stream let in: authorized, counted against its owner's limit, holding its ticket
    until it joins the hub (``attach``). ``close()`` undoes all of it, once; every way out,
    an exception or a cancellation at any ``await``, must reach it."""

    __slots__ = (
        "closed",
        "counter",
        "hub",
        "owner",
        "session",
        "subscriber",
        "ticket",
        "user_id",
    )

    def __init__(
        self,
        hub: Hub,
        ticket: Ticket,
        user_id: str | None,
        session: str | None,
        owner: str,
        counter: limits.StreamCounter | None,
    ) -> None:
        self.hub = hub
        self.ticket = ticket
        self.user_id = user_id
        self.session = session
        self.owner = owner
        self.counter = counter
        self.subscriber: Subscriber | None = None
        self.closed = False

    def attach(self, channels: Sequence[str]) -> Subscriber:
        """The stream's subscriber, registered in the hub from the calling task, which is
        the one that streams: when it ends, however it ends, the admission is closed."""
        if self.closed:
            raise RuntimeError("attach() after close()")
        subscriber = self.hub.attach(channels, self.user_id, self.ticket, self.session)
        self.subscriber = subscriber
        task = asyncio.current_task()
        if task is not None:
            task.add_done_callback(lambda _: self.close())
        return subscriber

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.ticket.close()
        if self.subscriber is not None:
            self.hub.unsubscribe(self.subscriber)
        if self.counter is not None:
            self.counter.release(self.owner)


async def admit(scope: Mapping[str, Any], channels: Sequence[str]) -> Admission:
    """Let a stream of ``channels`` in, or raise ``Refused``: the hub is ready (503), its
    user may read them (403), its owner is under the limit (429). The caller must
    ``close()`` what this returns, on every way out.

    Order matters: the ticket is taken before the user is looked up (here, or by Channels'
    middleware: ``notify.routing``), so that a revocation stored from then on, even while
    the session is being read, closes the stream as it joins."""
    hub = get_hub()
    if "user" in scope and TICKET_SCOPE_KEY not in scope:
        _warn_without_ticket()
    if TICKET_SCOPE_KEY in scope:
        ticket = scope[TICKET_SCOPE_KEY]
        if ticket is None:
            raise Refused(
                503,
                "Streams are unavailable: the database could not be read.",
                UNAVAILABLE_RETRY_AFTER,
            )
    else:
        try:
            await hub.until_ready()
        except HubUnavailable as exc:
            raise Refused(503, f"Streams are unavailable: {exc}.", UNAVAILABLE_RETRY_AFTER) from exc
        ticket = hub.ticket()
    try:
        access = await check_access(scope, channels)
        if access.refused:
            raise Refused(403, authorization.describe_refusal(access.refused))
        # Counted only under a limit: counting is a broker round trip, and with no limit to
        # compare with it serves nothing. ``acquire`` counts nothing if it is cancelled.
        owner, limit = limits.owner(access.user_id, limits.client_address(scope))
        counter = None
        if limit is not None:
            counter = limits.get_counter()
            if not await counter.acquire(owner, limit):
                raise Refused(429, limits.refusal(owner, limit), limits.RETRY_AFTER)
    except BaseException:
        ticket.close()
        raise
    session = None
    if access.user_id is not None:
        # The session that let the user in, if any: a logout, or a login in its browser,
        # ends the streams of that session (not those of the user's other sessions).
        key = parse_cookie(_cookie_header(scope)).get(settings.SESSION_COOKIE_NAME)
        session = authorization.session_digest(key) if key else None
    # No await from here to the caller's try: nothing can cancel the stream in between.
    return Admission(hub, ticket, access.user_id, session, owner, counter)


_warned = False


def _warn_without_ticket() -> None:
    global _warned
    if not _warned:
        _warned = True
        logger.warning(
            "notify: a stream's user was looked up by a middleware outside "
            "notify.routing.TicketMiddleware (scope['user'] was set before notify saw the "
            "connection): a revocation stored while it read the session would be missed. "
            "Route WebSocket streams with notify.routing.websocket_application(), or put "
            "TicketMiddleware outside the middleware that finds the user; serve SSE streams "
            "with NotifyASGIHandler outside any such middleware."
        )


@contextlib.asynccontextmanager
async def admitted(scope: Mapping[str, Any], request: StreamRequest) -> AsyncIterator[Subscriber]:
    """The stream's subscriber in the running loop's hub, for the ``async with`` block;
    unsubscribed (and no longer counted against its owner's limit) when the block ends.
    Raises ``Refused``."""
    admission = await admit(scope, request.channels)
    try:
        yield admission.attach(request.channels)
    finally:
        admission.close()


async def check_access(scope: Mapping[str, Any], channels: Sequence[str]) -> authorization.Access:
    """Which of ``channels`` the connection's user may not read, and that user's pk.

    The user is ``scope["user"]`` when Channels' ``AuthMiddlewareStack`` found it, else the
    one logged in to the session of the ``Cookie`` header (as ``AuthenticationMiddleware``
    finds it: streams are served before Django's middleware runs)."""
    if authorization.is_open():
        # Nobody's user is needed: opening a stream then reads no session and no user.
        return authorization.Access([], None)
    default = authorization.policy() is authorization.default_policy
    user = scope.get("user")
    if user is not None:
        if default and not user.is_authenticated:
            # The default policy answers a visitor without the database.
            return authorization.check(user, channels)
        return await db_call(authorization.check, user, channels)
    cookie_header = _cookie_header(scope)
    if default and not parse_cookie(cookie_header).get(settings.SESSION_COOKIE_NAME):
        # Nobody is logged in, and the default policy answers a visitor without the
        # database: no thread-pool call (a reconnect storm of visitors costs one less each).
        return authorization.check(authorization.anonymous_user(), channels)
    # Once, before streaming, in one thread-pool call that then closes its connection (the
    # policy may query the database too): an open stream holds no connection.
    return await db_call(lambda: authorization.check(session_user(cookie_header), channels))


def session_user(cookie_header: str) -> Any:
    """The user logged in to the session named by a ``Cookie`` header, found as
    ``AuthenticationMiddleware`` finds it; ``authorization.anonymous_user()`` when there is
    none, or when ``django.contrib.auth`` or ``django.contrib.sessions`` is not installed.
    Reads the database: call it through ``db_call``.
    """
    if not (
        apps.is_installed("django.contrib.auth") and apps.is_installed("django.contrib.sessions")
    ):
        return authorization.anonymous_user()
    # get_user reads nothing of the request but its session.
    request = HttpRequest()
    session_key = parse_cookie(cookie_header).get(settings.SESSION_COOKIE_NAME)
    request.session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    return get_user(request)


def _header_values(scope: Mapping[str, Any], name: bytes) -> list[str]:
    # HTTP header bytes are latin-1 by definition; nothing is lost decoding them.
    return [bytes(value).decode("latin-1") for key, value in scope["headers"] if key == name]


def _cookie_header(scope: Mapping[str, Any]) -> str:
    # HTTP/2 clients may split cookies over several headers; Django joins them likewise.
    return "; ".join(_header_values(scope, b"cookie"))


def header(scope: Mapping[str, Any], name: bytes) -> str | None:
    """The request header ``name`` (lowercase). A header given twice is joined with "," as
    Django joins it, so that the fallback view reads a request as the ASGI handler does
    (two Last-Event-IDs are no valid cursor, not the first)."""
    values = _header_values(scope, name)
    return ",".join(values) if values else None
