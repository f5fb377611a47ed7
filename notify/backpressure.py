"""Write flow control for servers whose ASGI ``send()`` never waits: daphne.

The rule is that every buffer is bounded: a client that does not keep up is disconnected
(it resumes from the database) rather than held in memory. Under uvicorn (and most ASGI
servers) ``await send()`` waits while the client's socket is full, so a stalled client's
events pile up in its subscriber's bounded buffer until the hub closes it as too slow.

daphne's ``send()`` hands the bytes to Twisted, whose transport buffers them without limit.
Twisted does have flow control, for a registered push producer: when a transport's buffer
passes ``bufferSize`` (64 KiB) it calls ``HTTPChannel.pauseProducing()``, which forwards to
the producer of the channel's current request, and ``resumeProducing()`` once the buffer is
flushed to the socket. ``flow_control()`` registers such a producer on daphne's request
(daphne 4 builds ``send`` as ``functools.partial(server.handle_reply, request)``, the
request being a ``twisted.web.http.Request``); it turns pause/resume into
``Subscriber.pause()``/``resume()``, so a paused stream writes nothing and its events wait
in the subscriber's buffer, bounded by MAX_BUFFER. Any other server gets nothing.

A WebSocket under daphne is the same story one level down: ``send`` is
``partial(server.handle_reply, protocol)`` with an autobahn protocol whose writes go to the
TCP transport unbounded. ``websocket_flow_control()`` registers the producer on that
transport itself (see there).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from notify.hub import Subscriber

logger = logging.getLogger("notify.backpressure")


class _Producer:
    """A Twisted push producer (IPushProducer) that pauses and resumes one stream."""

    __slots__ = ("subscriber",)

    def __init__(self, subscriber: Subscriber) -> None:
        self.subscriber = subscriber

    # -- IPushProducer: called by Twisted, hence the camelCase ------------------------------

    def pauseProducing(self) -> None:
        self.subscriber.pause()

    def resumeProducing(self) -> None:
        self.subscriber.resume()

    def stopProducing(self) -> None:
        # The connection is gone (daphne also tells the application; whichever comes first).
        self.subscriber.close("client-gone")


class FlowControl(_Producer):
    """The producer of one daphne response (``request`` is its ``twisted.web.http.Request``)."""

    __slots__ = ("request",)

    def __init__(self, request: Any, subscriber: Subscriber) -> None:
        super().__init__(subscriber)
        self.request: Any = request

    # -- for notify.asgi ----------------------------------------------------------------------

    def detach(self) -> bool:
        """Unregister from the request, before the response ends: Twisted logs an error
        for a request finished with a producer still registered. Idempotent.

        Returns True when it aborted the connection: then nothing more may be sent. That is
        when the stream was closed as too slow while paused. Twisted then still holds what
        it could not send (over 64 KiB when it paused, the last write included), and daphne
        has no write timeout: a client that never reads again but keeps its connection open
        (a zero TCP window) would hold that memory for good. Aborting drops it, and the
        kernel's send buffer with it; the client loses nothing, since it reconnects from the
        id of the last event it received whole. A stream closed for any other reason, or
        while not paused, ends its response normally.
        """
        request = self.request
        if request is None:
            return False
        self.request = None
        # None (or deleted) once the connection is lost or the response finished.
        channel = getattr(request, "channel", None)
        if channel is None:
            return False
        request.unregisterProducer()
        if not (self.subscriber.closed == "too-slow" and self.subscriber.paused):
            return False
        # HTTP/2 (H2Stream) resets just this stream; HTTP/1.x closes the TCP connection.
        abort: Callable[[], None] | None = getattr(channel, "abortConnection", None)
        if abort is None:
            abort = getattr(getattr(channel, "transport", None), "abortConnection", None)
        if abort is None:
            return False
        abort()
        return True


def _daphne_connection(send: Callable[..., Any]) -> Any:
    """What daphne 4 builds ``send`` for: ``partial(server.handle_reply, connection)``, the
    connection being the ``twisted.web.http.Request`` of an HTTP response or the autobahn
    protocol of a WebSocket. None under any other server."""
    if not (isinstance(send, functools.partial) and len(send.args) == 1 and not send.keywords):
        return None
    if getattr(send.func, "__name__", None) != "handle_reply":
        return None
    return send.args[0]


def flow_control(send: Callable[..., Any], subscriber: Subscriber) -> FlowControl | None:
    """Pause ``subscriber`` while daphne's buffer for this client is full. None when the
    server is not daphne (nothing to do: ``await send()`` applies backpressure itself)."""
    request = _daphne_connection(send)
    register = getattr(request, "registerProducer", None)
    if not callable(register) or not callable(getattr(request, "unregisterProducer", None)):
        return None
    if getattr(request, "channel", None) is None or getattr(request, "producer", None):
        return None  # disconnected already, or someone else's producer is registered
    producer = FlowControl(request, subscriber)
    try:
        register(producer, True)  # streaming: a push producer
    except Exception:
        # Not the Twisted API this was written for; run without (as before).
        logger.warning("notify: could not register for daphne's flow control", exc_info=True)
        return None
    return producer


class TransportFlowControl(_Producer):
    """The producer of one daphne WebSocket, registered on its transport."""

    __slots__ = ("transport",)

    def __init__(self, transport: Any, subscriber: Subscriber) -> None:
        super().__init__(subscriber)
        self.transport: Any = transport

    def detach(self) -> None:
        """Unregister from the transport. Idempotent. A stalled client needs nothing more
        here: the close frame the stream ends with waits behind what the transport holds,
        and autobahn drops the connection when the close handshake times out."""
        transport = self.transport
        self.transport = None
        if transport is not None and getattr(transport, "producer", None) is self:
            transport.unregisterProducer()


def websocket_flow_control(
    send: Callable[..., Any], subscriber: Subscriber
) -> TransportFlowControl | None:
    """Pause ``subscriber`` while daphne's buffer for this WebSocket's client is full. None
    under other servers (whose ``await send()`` applies backpressure itself), and over TLS
    (a transport that does not say which producer it has)."""
    protocol = _daphne_connection(send)
    if not callable(getattr(protocol, "sendMessage", None)):
        return None  # not a WebSocket protocol
    transport = getattr(protocol, "transport", None)
    if transport is None or not hasattr(transport, "producer"):
        return None
    if not callable(getattr(transport, "registerProducer", None)):
        return None
    stale = transport.producer
    if stale is not None:
        # daphne upgrades an HTTP connection to a WebSocket by handing the HTTP channel's
        # transport to the WebSocket protocol; the channel stays registered as the
        # transport's producer, with no response left to pause. Take its place.
        from twisted.web.http import HTTPChannel  # daphne's dependency: there, if daphne is

        if not isinstance(stale, HTTPChannel):
            return None  # someone else's producer: leave it be
        transport.unregisterProducer()
    producer = TransportFlowControl(transport, subscriber)
    try:
        transport.registerProducer(producer, True)
    except Exception:
        logger.warning("notify: could not register for daphne's flow control", exc_info=True)
        return None
    return producer
