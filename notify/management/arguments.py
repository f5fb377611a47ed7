"""Argument types shared by notify's management commands."""

from __future__ import annotations

import argparse


def positive_int(raw: str) -> int:
    """An argparse ``type``: a whole number of at least 1."""
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f'"{raw}" is not a whole number of at least 1')
    return value
