"""Who may read which channel: the stream, the history API and the admin's counts ask here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from django.apps import apps
from django.http import HttpRequest
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


def is_open() -> bool:
    """Whether every channel is public (``AUTHORIZE`` unset): callers then need no user."""
    return policy() is allow_all


def refused(user: Any, channels: Sequence[str]) -> list[str]:
    """The channels of ``channels`` that ``user`` may not read (an empty list: all allowed).
    ``user`` is a Django user, ``AnonymousUser`` for visitors (see ``anonymous_user``)."""
    allowed = policy()
    return [channel for channel in channels if not allowed(user, channel)]


def anonymous_user() -> Any:
    """The user of a request nobody is logged in to: ``AnonymousUser``, or None in a project
    without ``django.contrib.auth`` (whose models cannot be imported there)."""
    if not apps.is_installed("django.contrib.auth"):
        return None
    from django.contrib.auth.models import AnonymousUser

    return AnonymousUser()


def describe_refusal(channels: Sequence[str]) -> str:
    """The reason given to a client refused ``channels`` (the result of ``refused``)."""
    noun = "channel" if len(channels) == 1 else "channels"
    names = ", ".join(f'"{channel}"' for channel in channels)
    return f"not allowed to read {noun} {names}"


def request_user(request: HttpRequest) -> Any:
    """``request.user`` when ``AuthenticationMiddleware`` set it, else ``anonymous_user()``."""
    user = getattr(request, "user", None)
    return anonymous_user() if user is None else user
