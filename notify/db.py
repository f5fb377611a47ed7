"""Database access from async code without pinning a thread or a connection to a stream."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections

P = ParamSpec("P")
R = TypeVar("R")


def _run(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    # As in channels.db: drop connections past CONN_MAX_AGE (or broken ones) before and
    # after, so with the default CONN_MAX_AGE=0 no connection outlives the call.
    close_old_connections()
    try:
        return fn(*args, **kwargs)
    finally:
        close_old_connections()


async def db_call(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run ``fn`` in the shared thread pool (not a thread per request or per stream)."""
    return await sync_to_async(_run, thread_sensitive=False)(fn, *args, **kwargs)
