"""The one place that reads notify's settings.

Every setting lives in the ``NOTIFY`` dict of the project's settings. Values are read
on each access (not cached at import), so ``override_settings(NOTIFY=...)`` works in tests.

The system checks (``notify.checks``) report a misconfiguration, but only where checks run
(``manage.py check``, ``runserver``, ``migrate``): daphne and uvicorn run none. A setting whose
wrong value would open something at run time is therefore refused here too, failing closed,
with an error logged once per process (``report_misconfiguration``).
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from django.conf import settings

logger = logging.getLogger("notify.conf")

DEFAULTS: dict[str, Any] = {
    # Redis for cross-process fan-out; None runs the embedded broker (one process polls the DB).
    "REDIS_URL": None,
    # Dotted path of a notify.broker.base.Broker subclass; None picks Redis or embedded.
    "BROKER": None,
    # Prefix of the Redis pub/sub channel, so several projects can share one Redis.
    "REDIS_PREFIX": "notify",
    "MAX_PAYLOAD_BYTES": 64 * 1024,
    "MAX_CHANNELS": 32,
    "RETRY_MS": 3000,
    "HEARTBEAT_SECONDS": 15.0,
    # Events waiting for one slow stream before it is closed (it resumes from the database).
    "MAX_BUFFER": 1000,
    # How often the embedded broker (or a process whose Redis is down) looks for new ids.
    "POLL_SECONDS": 0.5,
    # How often a process whose Redis subscription is up still looks for new ids, for an
    # event whose notice was lost (its publisher could not reach Redis).
    "RECONCILE_SECONDS": 5.0,
    # Rows per replay query.
    "REPLAY_BATCH": 500,
    # How long a process waits for a missing id to arrive before asking the database.
    "GAP_WAIT_SECONDS": 0.05,
    # How long events are kept: an event goes once it is older than max_age seconds OR is not
    # among the newest max_events. None switches a limit off. The newest event always stays.
    "RETENTION": {"max_age": 7 * 24 * 3600, "max_events": None},
    # Publishing prunes at most this often per process, one batch per publish until done.
    "PRUNE_INTERVAL_SECONDS": 300.0,
    # Rows deleted per DELETE statement when pruning.
    "PRUNE_BATCH": 1000,
    # How often each process reports its open streams per channel (notify.presence).
    "PRESENCE_SECONDS": 5.0,
    # A stream ends after this many seconds (±10 %) and its client resumes; None: never.
    "MAX_STREAM_SECONDS": 3600,
    # Open streams per logged-in user, and per client address for other streams; None: no
    # limit. Counted over every process when Redis is used (notify.limits).
    "MAX_STREAMS_PER_USER": 20,
    "MAX_STREAMS_PER_IP": 100,
    # Bearer tokens accepted by the HTTP publish API (POST /notify/publish/).
    "PUBLISH_TOKENS": [],
    # Exact origins ("https://app.example.com") whose pages may open streams from another
    # origin (CORS); [] answers no other origin.
    "CORS_ALLOWED_ORIGINS": [],
    # Whether those pages may send their cookies with the stream (withCredentials: true).
    "CORS_ALLOW_CREDENTIALS": True,
    # Dotted path of a callable (user, channel) -> bool deciding who may read a channel;
    # "notify.authorization.allow_all" lets everyone read every channel.
    "AUTHORIZE": "notify.authorization.default_policy",
    # Bearer token that may read /notify/metrics/ (staff users may with their session);
    # None: staff only.
    "METRICS_TOKEN": None,
}


class Retention(NamedTuple):
    max_age: float | None
    max_events: int | None


def user_settings() -> dict[str, Any]:
    value = getattr(settings, "NOTIFY", {})
    return value if isinstance(value, dict) else {}


def get(name: str) -> Any:
    return user_settings().get(name, DEFAULTS[name])


_reported: set[str] = set()


def report_misconfiguration(check_id: str, message: str) -> None:
    """Log ``message`` as an error, the first time only of each process for ``check_id``
    (the system check that reports the same problem): it would otherwise come with every
    request that meets the setting."""
    if check_id not in _reported:
        _reported.add(check_id)
        logger.error("notify: %s (%s)", message, check_id)


class Settings:
    """Typed accessors; each property reads the current value of one setting."""

    @property
    def REDIS_URL(self) -> str | None:
        return get("REDIS_URL") or None

    @property
    def BROKER(self) -> str | None:
        return get("BROKER")

    @property
    def REDIS_PREFIX(self) -> str:
        return str(get("REDIS_PREFIX"))

    @property
    def MAX_PAYLOAD_BYTES(self) -> int:
        return int(get("MAX_PAYLOAD_BYTES"))

    @property
    def MAX_CHANNELS(self) -> int:
        return int(get("MAX_CHANNELS"))

    @property
    def RETRY_MS(self) -> int:
        return int(get("RETRY_MS"))

    @property
    def HEARTBEAT_SECONDS(self) -> float:
        return float(get("HEARTBEAT_SECONDS"))

    @property
    def MAX_BUFFER(self) -> int:
        return int(get("MAX_BUFFER"))

    @property
    def POLL_SECONDS(self) -> float:
        return float(get("POLL_SECONDS"))

    @property
    def REPLAY_BATCH(self) -> int:
        return int(get("REPLAY_BATCH"))

    @property
    def RECONCILE_SECONDS(self) -> float:
        return float(get("RECONCILE_SECONDS"))

    @property
    def GAP_WAIT_SECONDS(self) -> float:
        return float(get("GAP_WAIT_SECONDS"))

    @property
    def RETENTION(self) -> Retention:
        value = {**DEFAULTS["RETENTION"], **(get("RETENTION") or {})}
        max_age, max_events = value["max_age"], value["max_events"]
        return Retention(
            None if max_age is None else float(max_age),
            None if max_events is None else int(max_events),
        )

    @property
    def PRUNE_INTERVAL_SECONDS(self) -> float:
        return float(get("PRUNE_INTERVAL_SECONDS"))

    @property
    def PRUNE_BATCH(self) -> int:
        return int(get("PRUNE_BATCH"))

    @property
    def PRESENCE_SECONDS(self) -> float:
        return float(get("PRESENCE_SECONDS"))

    @property
    def MAX_STREAM_SECONDS(self) -> float | None:
        value = get("MAX_STREAM_SECONDS")
        return None if value is None else float(value)

    @property
    def MAX_STREAMS_PER_USER(self) -> int | None:
        value = get("MAX_STREAMS_PER_USER")
        return None if value is None else int(value)

    @property
    def MAX_STREAMS_PER_IP(self) -> int | None:
        value = get("MAX_STREAMS_PER_IP")
        return None if value is None else int(value)

    @property
    def PUBLISH_TOKENS(self) -> list[str]:
        value = get("PUBLISH_TOKENS") or []
        # Read as a list, a string would make each of its characters a token, and str() of
        # an os.environ.get() that found nothing would make "None" one.
        given = list(value) if isinstance(value, list | tuple) else None
        tokens = [token for token in given or [] if isinstance(token, str) and token]
        if given is None or len(tokens) < len(given):
            report_misconfiguration(
                "notify.E009",
                'NOTIFY["PUBLISH_TOKENS"] must be a list of non-empty strings; '
                "anything else in it is no token",
            )
        return tokens

    @property
    def CORS_ALLOWED_ORIGINS(self) -> list[str]:
        return [str(origin) for origin in get("CORS_ALLOWED_ORIGINS") or []]

    @property
    def CORS_ALLOW_CREDENTIALS(self) -> bool:
        return bool(get("CORS_ALLOW_CREDENTIALS"))

    @property
    def AUTHORIZE(self) -> str:
        return get("AUTHORIZE") or DEFAULTS["AUTHORIZE"]

    @property
    def METRICS_TOKEN(self) -> str | None:
        value = get("METRICS_TOKEN")
        if value is None or (isinstance(value, str) and value):
            return value
        # str() would make a token of anything: METRICS_TOKEN = True let "Bearer True" in.
        report_misconfiguration(
            "notify.E015",
            'NOTIFY["METRICS_TOKEN"] must be None or a non-empty string; it is ignored, '
            "and staff users alone may read the metrics",
        )
        return None


notify_settings = Settings()
