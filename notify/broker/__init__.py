"""The process's broker, chosen from settings and dropped when they change."""

from __future__ import annotations

import threading

from django.utils.module_loading import import_string

from notify.broker.base import (
    RESYNC,
    Broker,
    Notice,
    Resync,
    decode_notice,
    encode_notice,
)
from notify.conf import notify_settings

__all__ = [
    "RESYNC",
    "Broker",
    "Notice",
    "Resync",
    "decode_notice",
    "encode_notice",
    "get_broker",
    "reset_broker",
]

_lock = threading.Lock()
_broker: Broker | None = None


def _build() -> Broker:
    if notify_settings.BROKER:
        return import_string(notify_settings.BROKER)()
    if notify_settings.REDIS_URL:
        from notify.broker.redis import RedisBroker

        return RedisBroker(
            notify_settings.REDIS_URL,
            prefix=notify_settings.REDIS_PREFIX,
            health_check_seconds=notify_settings.HEARTBEAT_SECONDS,
        )
    from notify.broker.local import LocalBroker

    return LocalBroker()


def get_broker() -> Broker:
    global _broker
    with _lock:
        if _broker is None:
            _broker = _build()
        return _broker


def reset_broker() -> None:
    """Forget the broker (on ``setting_changed``); the next call builds a new one."""
    global _broker
    with _lock:
        _broker = None
