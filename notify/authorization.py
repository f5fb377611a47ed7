"""Who may read which channel: the stream, the history API and the admin's counts ask here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from django.utils.module_loading import import_string

from notify.conf import notify_settings

Policy = Callable[[Any, str], bool]


def allow_all(user: Any, channel: str) -> bool:
    """The policy when ``NOTIFY["AUTHORIZE"]`` is unset: every channel is public."""
    return True


@lru_cache(maxsize=8)
def _load(path: str) -> Policy:
    policy = import_string(path)
    if not callable(policy):
        raise TypeError(f'NOTIFY["AUTHORIZE"] {path!r} is not callable')
    return policy


def policy() -> Policy:
    path = notify_settings.AUTHORIZE
    return allow_all if path is None else _load(path)


def refused(user: Any, channels: Sequence[str]) -> list[str]:
    """The channels of ``channels`` that ``user`` may not read (an empty list: all allowed).
    ``user`` is a Django user, ``AnonymousUser`` for visitors."""
    allowed = policy()
    return [channel for channel in channels if not allowed(user, channel)]
