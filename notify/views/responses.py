"""The JSON answers the publish and history APIs share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.http import JsonResponse


def json_error(
    status: int, message: str, *, headers: Mapping[str, str] | None = None, **details: Any
) -> JsonResponse:
    """``{"error": message, **details}``; the message says what was wrong."""
    return JsonResponse({"error": message, **details}, status=status, headers=headers)


def method_not_allowed(allowed: Sequence[str], what: str) -> JsonResponse:
    """405 with ``Allow``; ``what`` names the resource for the message."""
    methods = " or ".join(allowed)
    return json_error(405, f"{what} accepts {methods} only", headers={"Allow": ", ".join(allowed)})
