"""Graceful shutdown on SIGTERM: streams end with a last ``retry:``, then the server stops.

Left to itself, neither server ends an endless stream well. daphne's SIGTERM handler stops
the Twisted reactor, whose "before shutdown" trigger cancels every running application:
each stream is cut mid-response, with no last frame. uvicorn's stops accepting and then
waits for every response to complete, which a stream never does: the process never exits
(unless ``--timeout-graceful-shutdown``, which then cancels them just as daphne does).

``watch()``, called as a stream opens, puts a handler in front of the server's own. On
SIGTERM it drains this process's hub first: new streams are answered with a ``retry:``
alone, open ones are closed (reason ``"shutdown"``) so that each ends its response with a
jittered ``retry:``, and after at most ``DRAIN_SECONDS`` the streams still there are
cancelled. Only then is the server's handler called, with no endless response left: daphne
and uvicorn then stop at once. The clients reconnect with their ``Last-Event-ID``, to
another process, and miss nothing.

A stream cancelled under uvicorn has its connection dropped by ``notify.asgi`` (uvicorn
would wait for its client to read what it holds). The fallback view cannot reach the
connection: there, a client that stopped reading keeps uvicorn waiting until it reads or
leaves, or until uvicorn's own ``--timeout-graceful-shutdown``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from notify.hub import running_hub

logger = logging.getLogger("notify.shutdown")

# The longest the open streams get to end before the server's own handler runs. Under
# Kubernetes the default grace period is 30 s: this leaves the server time to stop.
DRAIN_SECONDS = 5.0
# The reconnection delay a stream is given as it ends, picked anew for each stream: the
# clients of a stopping process would otherwise all reconnect at the same moment and land
# together on the processes that remain.
RECONNECT_MIN_MS = 250
RECONNECT_MAX_MS = 2000

Handler = Callable[[int, FrameType | None], Any] | int | None

# The loop whose hub a SIGTERM drains, and the handler that was there before ours: the
# server's, never our own, however often ours is installed again.
_loop: asyncio.AbstractEventLoop | None = None
_previous: Handler = None
# The drain under way (a reference, so that the task is not collected while it runs).
_drain: asyncio.Task[None] | None = None


def watch() -> None:
    """Drain this event loop's streams on SIGTERM before the server's handler runs.

    Call it from the event loop before a stream subscribes: it installs the handler once per
    loop (again for a new loop) and is cheap after that. It does nothing outside the main
    thread (signal handlers cannot be set there) or when SIGTERM is ignored or has a handler
    that Python did not install (which could not be called on)."""
    global _loop, _previous
    loop = asyncio.get_running_loop()
    if loop is _loop:
        return
    if threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_sigterm:
        previous = _previous
    elif current is signal.SIG_IGN or current is None:
        return
    else:
        previous = current
    signal.signal(signal.SIGTERM, _on_sigterm)
    _loop, _previous = loop, previous


def draining() -> bool:
    """Whether this event loop's streams are being ended for a shutdown."""
    hub = running_hub()
    return hub is not None and hub.draining


def reconnect_delay() -> int:
    """The ``retry:`` of a stream ended by a shutdown, in milliseconds: short, and random."""
    return random.randint(RECONNECT_MIN_MS, RECONNECT_MAX_MS)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    loop = _loop
    if loop is None or loop.is_closed() or not loop.is_running():
        _call_previous(signum)  # no stream can be open: nothing to wait for
        return
    try:
        loop.call_soon_threadsafe(_start_drain, signum)
    except RuntimeError:  # closed since
        _call_previous(signum)


def _start_drain(signum: int) -> None:
    global _drain
    if _drain is not None and not _drain.done():
        return  # another SIGTERM: the drain under way ends within DRAIN_SECONDS anyway
    _drain = asyncio.get_running_loop().create_task(_drain_then_stop(signum))


async def _drain_then_stop(signum: int) -> None:
    hub = running_hub()
    if hub is not None:
        # The server logs its own shutdown only once the streams are gone.
        logger.info("notify: SIGTERM: ending %d open streams first", len(hub.subscribers))
        try:
            await hub.drain(DRAIN_SECONDS)
        except Exception:
            # The server must stop all the same.
            logger.exception("notify: could not end the streams before shutting down")
    _call_previous(signum)


def _call_previous(signum: int) -> None:
    previous = _previous
    if previous is signal.SIG_DFL:
        # Die of the signal, as the process would have without us.
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)
    elif callable(previous):
        previous(signum, None)
