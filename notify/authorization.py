"""Who may read which channel: the stream, the history API and the admin's counts ask here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

from django.apps import apps
from django.http import HttpRequest
from django.utils.crypto import salted_hmac
from django.utils.module_loading import import_string

from notify.conf import notify_settings

Policy = Callable[[Any, str], bool]


class Access(NamedTuple):
    """What a stream may do: the channels it was refused (none: it may open) and the pk of its
    user (``str``; None for an anonymous visitor, or when no user was looked up), by which
    ``notify.revoke`` finds the stream."""

    refused: list[str]
    user_id: str | None


def default_policy(user: Any, channel: str) -> bool:
    """The policy unless ``NOTIFY["AUTHORIZE"]`` names another:

    - ``broadcast`` and ``public:*``: everyone, visitors included;
    - ``user:<pk>``: that user only;
    - ``group:<name>``: members of the Django group ``<name>``;
    - ``staff:*``: active staff users;
    - any other channel: nobody (a project's own policy may open it).

    ``user`` is a Django user or ``AnonymousUser`` (None without ``django.contrib.auth``).
    A group channel costs one query; the stream runs it in the thread-pool call that finds
    the user.
    """
    if channel == "broadcast" or channel.startswith("public:"):
        return True
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    kind, colon, name = channel.partition(":")
    if not colon:
        return False
    if kind == "user":
        return str(user.pk) == name
    if kind == "group":
        # A custom user model without PermissionsMixin has no groups.
        groups = getattr(user, "groups", None)
        return bool(name) and groups is not None and groups.filter(name=name).exists()
    if kind == "staff":
        return bool(getattr(user, "is_staff", False))
    return False


def allow_all(user: Any, channel: str) -> bool:
    """Every channel is public: set ``NOTIFY["AUTHORIZE"] = "notify.authorization.allow_all"``.
    Streams then look up no user (and ``notify.revoke`` cannot find them)."""
    return True


@lru_cache(maxsize=8)
def _load(path: str) -> Policy:
    policy = import_string(path)
    if not callable(policy):
        raise TypeError(f'NOTIFY["AUTHORIZE"] {path!r} is not callable')
    return policy


def policy() -> Policy:
    return _load(notify_settings.AUTHORIZE)


def is_open() -> bool:
    """Whether every channel is public (``allow_all``): callers then need no user."""
    return policy() is allow_all


def refused(user: Any, channels: Sequence[str]) -> list[str]:
    """The channels of ``channels`` that ``user`` may not read (an empty list: all allowed).
    ``user`` is a Django user, ``AnonymousUser`` for visitors (see ``anonymous_user``)."""
    allowed = policy()
    return [channel for channel in channels if not allowed(user, channel)]


def check(user: Any, channels: Sequence[str]) -> Access:
    """``refused(user, channels)``, with the user's pk for revocation (see ``Access``)."""
    authenticated = user is not None and user.is_authenticated
    return Access(refused(user, channels), str(user.pk) if authenticated else None)


def anonymous_user() -> Any:
    """The user of a request nobody is logged in to: ``AnonymousUser``, or None in a project
    without ``django.contrib.auth`` (whose models cannot be imported there)."""
    if not apps.is_installed("django.contrib.auth"):
        return None
    from django.contrib.auth.models import AnonymousUser

    return AnonymousUser()


def session_digest(session_key: str) -> str:
    """What a stream and a revocation name a session by: a keyed digest of its key, which
    is a credential (the cookie) and is never stored nor held as it is."""
    return salted_hmac("notify.session", session_key, algorithm="sha256").hexdigest()[:32]


def describe_refusal(channels: Sequence[str]) -> str:
    """The reason given to a client refused ``channels`` (the result of ``refused``)."""
    noun = "channel" if len(channels) == 1 else "channels"
    names = ", ".join(f'"{channel}"' for channel in channels)
    return f"not allowed to read {noun} {names}"


def request_user(request: HttpRequest) -> Any:
    """``request.user`` when ``AuthenticationMiddleware`` set it, else ``anonymous_user()``."""
    user = getattr(request, "user", None)
    return anonymous_user() if user is None else user
