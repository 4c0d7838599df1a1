"""Waiting in tests for something another process does."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def until(what: str, predicate: Callable[[], Any], timeout: float, step: float = 0.1) -> Any:
    """The first truthy value of ``predicate()``, polled every ``step`` seconds; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")
