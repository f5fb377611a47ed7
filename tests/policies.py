"""A channel policy for the tests, chosen with ``NOTIFY["AUTHORIZE"]``."""

from __future__ import annotations

from typing import Any

POLICY = "tests.policies.staff_and_owners"


def staff_and_owners(user: Any, channel: str) -> bool:
    """``staff`` is for staff users, ``user:<pk>`` for that user; every other channel is
    public."""
    if channel == "staff":
        return user.is_staff
    if channel.startswith("user:"):
        return user.is_authenticated and channel == f"user:{user.pk}"
    return True
