"""A real WebSocket client of notify's stream for the tests, over the ``websockets`` package.

``WSClient.next()`` returns the next message, parsed; the close code is kept once the
server closes (``closed``), and ``ended()`` waits for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.processes import Server


def ws_url(server: Server, *channels: str, **params: str) -> str:
    """``ws://…/notify/ws/`` with one ``channel`` parameter per channel, and ``params``."""
    query = "&".join(
        [f"channel={channel}" for channel in channels] + [f"{k}={v}" for k, v in params.items()]
    )
    base = server.url.replace("http://", "ws://", 1) + "/notify/ws/"
    return f"{base}?{query}" if query else base


class Closed(Exception):
    """The server closed the connection: ``code`` (None: dropped without a close frame)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed with {code} {reason!r}")
        self.code = code
        self.reason = reason


class WSClient:
    def __init__(
        self,
        url: str,
        headers: dict[str, str] | None = None,
        origin: str | None = None,
        timeout: float = 10.0,
        **options: Any,
    ) -> None:
        """``options``: more of websockets' ``connect()`` (``ssl``, ``source_address``)."""
        self.timeout = timeout
        self.connection = connect(
            url,
            additional_headers=headers,
            origin=origin,  # type: ignore[arg-type]
            open_timeout=timeout,
            # No keepalive pings of the client's own: the server pings.
            ping_interval=None,
            max_size=None,
            **options,
        ).__enter__()  # what a with block does: websockets 17 wants it said
        self.received: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.closed: Closed | None = None

    def __enter__(self) -> WSClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next(self, timeout: float | None = None) -> dict[str, Any]:
        """The next message; raises ``Closed`` once the server has closed."""
        if self.closed is not None:
            raise self.closed
        try:
            text = self.connection.recv(timeout=self.timeout if timeout is None else timeout)
        except ConnectionClosed as exc:
            frame = exc.rcvd
            self.closed = Closed(
                None if frame is None else frame.code, "" if frame is None else frame.reason
            )
            raise self.closed from None
        assert isinstance(text, str), f"a binary message: {text!r}"
        self.raw.append(text)
        message = json.loads(text)
        self.received.append(message)
        return message

    def event(self) -> dict[str, Any]:
        """The next message that is not ``notify.retry``."""
        while True:
            message = self.next()
            if message.get("type") != "notify.retry":
                return message

    def until(self, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Messages up to and including the first that matches ``predicate``."""
        seen = []
        while True:
            message = self.next()
            seen.append(message)
            if predicate(message):
                return seen

    def until_type(self, kind: str) -> list[dict[str, Any]]:
        return self.until(lambda message: message.get("type") == kind)

    def ended(self, timeout: float | None = None) -> Closed:
        """Read until the server closes; the close (its code, its reason)."""
        try:
            while True:
                self.next(timeout)
        except Closed as closed:
            return closed

    def close(self) -> None:
        self.connection.close()


def event_ids(messages: list[dict[str, Any]]) -> list[int]:
    """The ids of the events (not control messages) among ``messages``."""
    return [message["id"] for message in messages if "type" not in message]
