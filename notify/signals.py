"""Drop what was built from settings when they change (``override_settings`` in tests)."""

from __future__ import annotations

from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver

from notify.asgi import is_stream_path
from notify.broker import reset_broker
from notify.hub import reset_hubs
from notify.retention import reset_pruner


@receiver(setting_changed)
def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "NOTIFY":
        reset_broker()
        reset_hubs()
        reset_pruner()
    elif setting == "ROOT_URLCONF":
        is_stream_path.cache_clear()
