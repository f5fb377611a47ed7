"""System checks: misconfiguration is reported by ``manage.py check`` and at start-up."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register
from django.db import connections, router
from django.utils.module_loading import import_string

from notify.conf import DEFAULTS

_POSITIVE_INTS = (
    "MAX_PAYLOAD_BYTES",
    "MAX_CHANNELS",
    "RETRY_MS",
    "MAX_BUFFER",
    "REPLAY_BATCH",
    "PRUNE_BATCH",
)
_POSITIVE_NUMBERS = (
    "HEARTBEAT_SECONDS",
    "POLL_SECONDS",
    "RECONCILE_SECONDS",
    "PRUNE_INTERVAL_SECONDS",
    "PRESENCE_SECONDS",
)
_ORDERED_VENDORS = ("postgresql", "sqlite")


@register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    raw = getattr(settings, "NOTIFY", {})
    if not isinstance(raw, dict):
        return [
            Error(
                f"NOTIFY must be a dict, not {type(raw).__name__}.",
                hint="Set NOTIFY = {} or a dict of the settings you change.",
                id="notify.E001",
            )
        ]
    errors: list[CheckMessage] = []
    for key in sorted(set(raw) - set(DEFAULTS)):
        errors.append(
            Warning(
                f"NOTIFY has an unknown key {key!r}; it is ignored.",
                hint=f"Known keys: {', '.join(sorted(DEFAULTS))}.",
                id="notify.W001",
            )
        )
    for key in _POSITIVE_INTS:
        value = raw.get(key, DEFAULTS[key])
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            errors.append(
                Error(
                    f'NOTIFY["{key}"] must be a positive integer, not {value!r}.', id="notify.E002"
                )
            )
    for key in (*_POSITIVE_NUMBERS, "GAP_WAIT_SECONDS"):
        value = raw.get(key, DEFAULTS[key])
        zero_ok = key == "GAP_WAIT_SECONDS"
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
            or (value == 0 and not zero_ok)
        ):
            kind = "a finite non-negative" if zero_ok else "a finite positive"
            errors.append(
                Error(f'NOTIFY["{key}"] must be {kind} number, not {value!r}.', id="notify.E003")
            )
    prefix = raw.get("REDIS_PREFIX", DEFAULTS["REDIS_PREFIX"])
    if not isinstance(prefix, str) or not prefix:
        errors.append(
            Error(
                f'NOTIFY["REDIS_PREFIX"] must be a non-empty string, not {prefix!r}.',
                id="notify.E007",
            )
        )
    errors.extend(_check_broker(raw.get("BROKER")))
    errors.extend(_check_retention(raw.get("RETENTION", DEFAULTS["RETENTION"])))
    errors.extend(_check_publish_tokens(raw.get("PUBLISH_TOKENS", [])))
    errors.extend(_check_metrics_token(raw.get("METRICS_TOKEN")))
    errors.extend(_check_authorize(raw.get("AUTHORIZE")))
    errors.extend(
        _check_cors(
            raw.get("CORS_ALLOWED_ORIGINS", DEFAULTS["CORS_ALLOWED_ORIGINS"]),
            raw.get("CORS_ALLOW_CREDENTIALS", DEFAULTS["CORS_ALLOW_CREDENTIALS"]),
        )
    )
    errors.extend(_check_stream_limits(raw))
    redis_url = raw.get("REDIS_URL")
    if redis_url and urlsplit(str(redis_url)).scheme not in ("redis", "rediss", "unix"):
        errors.append(
            Error(
                f'NOTIFY["REDIS_URL"] {redis_url!r} is not a Redis URL.',
                hint="Use redis://host:port/db, rediss://... or unix:///path/to/socket.",
                id="notify.E004",
            )
        )
    if not settings.USE_TZ:
        errors.append(
            Error(
                "notify needs USE_TZ = True: event timestamps are sent as UTC.",
                id="notify.E005",
            )
        )
    return errors


def _check_broker(path: Any) -> list[CheckMessage]:
    from notify.broker.base import Broker

    if path is None:
        return []
    try:
        broker_class = import_string(path) if isinstance(path, str) else None
    except ImportError as exc:
        return [Error(f'NOTIFY["BROKER"] {path!r} cannot be imported: {exc}', id="notify.E006")]
    if not (isinstance(broker_class, type) and issubclass(broker_class, Broker)):
        return [
            Error(
                f'NOTIFY["BROKER"] {path!r} is not a notify.broker.base.Broker subclass.',
                hint="Give the dotted path of a class, e.g. 'myproject.brokers.NatsBroker'.",
                id="notify.E006",
            )
        ]
    return []


def _check_retention(value: Any) -> list[CheckMessage]:
    hint = 'Set NOTIFY["RETENTION"] = {"max_age": <seconds or None>, "max_events": <int or None>}.'
    if not isinstance(value, dict) or set(value) - {"max_age", "max_events"}:
        return [
            Error(
                f'NOTIFY["RETENTION"] must be a dict with "max_age" and "max_events", '
                f"not {value!r}.",
                hint=hint,
                id="notify.E008",
            )
        ]
    errors: list[CheckMessage] = []
    max_age = value.get("max_age", DEFAULTS["RETENTION"]["max_age"])
    if max_age is not None and (
        isinstance(max_age, bool)
        or not isinstance(max_age, int | float)
        or not math.isfinite(max_age)
        or max_age <= 0
    ):
        errors.append(
            Error(
                f'NOTIFY["RETENTION"]["max_age"] must be a positive number of seconds or None, '
                f"not {max_age!r}.",
                hint=hint,
                id="notify.E008",
            )
        )
    max_events = value.get("max_events", DEFAULTS["RETENTION"]["max_events"])
    if max_events is not None and (
        isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 1
    ):
        errors.append(
            Error(
                f'NOTIFY["RETENTION"]["max_events"] must be a positive integer or None, '
                f"not {max_events!r}.",
                hint=hint,
                id="notify.E008",
            )
        )
    return errors


def _check_publish_tokens(value: Any) -> list[CheckMessage]:
    if not isinstance(value, list | tuple) or not all(
        isinstance(token, str) and token for token in value
    ):
        return [
            Error(
                'NOTIFY["PUBLISH_TOKENS"] must be a list of non-empty strings.',
                hint="Read them from the environment, e.g. os.environ['NOTIFY_TOKEN'].split().",
                id="notify.E009",
            )
        ]
    short = [token for token in value if len(token) < 32]
    if short:
        return [
            Warning(
                f'NOTIFY["PUBLISH_TOKENS"] has {len(short)} token(s) shorter than 32 characters.',
                hint="Make one with: python -c 'import secrets; print(secrets.token_urlsafe())'",
                id="notify.W003",
            )
        ]
    return []


def _check_metrics_token(value: Any) -> list[CheckMessage]:
    if value is None or (isinstance(value, str) and value):
        return []
    # The value itself is not shown: it may be a secret in the wrong shape.
    shown = "an empty string" if value == "" else f"a value of type {type(value).__name__}"
    return [
        Error(
            f'NOTIFY["METRICS_TOKEN"] must be None or a non-empty string, not {shown}.',
            hint="None lets staff users alone read /notify/metrics/. Make a token with: "
            "python -c 'import secrets; print(secrets.token_urlsafe())'",
            id="notify.E015",
        )
    ]


def _check_authorize(path: Any) -> list[CheckMessage]:
    if path is None:
        return []
    try:
        policy = import_string(path) if isinstance(path, str) else None
    except ImportError as exc:
        return [Error(f'NOTIFY["AUTHORIZE"] {path!r} cannot be imported: {exc}', id="notify.E010")]
    if not callable(policy):
        return [
            Error(
                f'NOTIFY["AUTHORIZE"] {path!r} is not a callable.',
                hint="Give the dotted path of a function (user, channel) -> bool.",
                id="notify.E010",
            )
        ]
    return []


def _check_stream_limits(raw: dict[str, Any]) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for key in ("MAX_STREAMS_PER_USER", "MAX_STREAMS_PER_IP"):
        value = raw.get(key, DEFAULTS[key])
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            errors.append(
                Error(
                    f'NOTIFY["{key}"] must be a positive integer or None, not {value!r}.',
                    hint="None switches the limit off.",
                    id="notify.E013",
                )
            )
    seconds = raw.get("MAX_STREAM_SECONDS", DEFAULTS["MAX_STREAM_SECONDS"])
    if seconds is None:
        return errors
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or seconds <= 0
    ):
        errors.append(
            Error(
                f'NOTIFY["MAX_STREAM_SECONDS"] must be a positive number or None, not {seconds!r}.',
                hint="None lets a stream last for ever.",
                id="notify.E014",
            )
        )
        return errors
    heartbeat = raw.get("HEARTBEAT_SECONDS", DEFAULTS["HEARTBEAT_SECONDS"])
    # An invalid heartbeat is E003's to report.
    if isinstance(heartbeat, int | float) and math.isfinite(heartbeat) and seconds < heartbeat:
        errors.append(
            Warning(
                f'NOTIFY["MAX_STREAM_SECONDS"] ({seconds}) is shorter than '
                f'NOTIFY["HEARTBEAT_SECONDS"] ({heartbeat}): every idle client reconnects '
                f"before its first heartbeat.",
                hint="Let streams last minutes at least (the default is an hour).",
                id="notify.W004",
            )
        )
    return errors


def _check_cors(origins: Any, credentials: Any) -> list[CheckMessage]:
    hint = 'List exact origins, scheme and host and any port: ["https://app.example.com"].'
    if not isinstance(origins, list | tuple) or not all(isinstance(o, str) for o in origins):
        return [
            Error(
                f'NOTIFY["CORS_ALLOWED_ORIGINS"] must be a list of origins, not {origins!r}.',
                hint=hint,
                id="notify.E012",
            )
        ]
    errors: list[CheckMessage] = []
    if "*" in origins and credentials:
        errors.append(
            Error(
                'NOTIFY["CORS_ALLOWED_ORIGINS"] has "*" while NOTIFY["CORS_ALLOW_CREDENTIALS"] '
                "is true: any site could read the streams of your logged-in users.",
                hint='List the origins you trust, or set NOTIFY["CORS_ALLOW_CREDENTIALS"] = False.',
                id="notify.E011",
            )
        )
    for origin in origins:
        if origin != "*" and not _is_origin(origin):
            errors.append(
                Error(
                    f'NOTIFY["CORS_ALLOWED_ORIGINS"] has {origin!r}, which is not an origin.',
                    hint=hint,
                    id="notify.E012",
                )
            )
    return errors


def _is_origin(value: str) -> bool:
    """Whether ``value`` is an origin as a browser sends it: ``scheme://host[:port]``."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and not (parts.path or parts.query or parts.fragment or "@" in parts.netloc)
        and "?" not in value
        and "#" not in value
        and value.isascii()
        and value == value.lower()
        and (port is None or f":{port}" == value[value.rfind(":") :])
    )


@register(deploy=False)
def check_database(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from notify.models import Event

    alias = router.db_for_write(Event)
    vendor = connections[alias].vendor
    if vendor in _ORDERED_VENDORS:
        return []
    return [
        Warning(
            f"notify keeps events in commit order only on PostgreSQL and SQLite; "
            f"database {alias!r} is {vendor}.",
            hint="Concurrent publishers may be delivered out of id order.",
            id="notify.W002",
        )
    ]
