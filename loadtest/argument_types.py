"""Argument types the load tools' command lines share (argparse `type=`).

A bad value is argparse's usage error (exit code 2) naming the bounds or
the choices, never a traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """A whole number from `low` to `high`."""

    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return value

    return parse


def choices(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    """A comma-separated list, at least one, each of `allowed`."""

    def parse(text: str) -> list[str]:
        chosen = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in chosen if item not in allowed]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}")
        return chosen

    return parse
