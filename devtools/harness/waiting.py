"""Waiting on a condition: tests wait on events, never on a fixed sleep."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], *, timeout: float, interval: float = 0.1, message: str = "") -> T:
    """Poll ``check`` until it returns something truthy; raise ``TimeoutError`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(message or f"condition not met in {timeout}s")
        time.sleep(interval)


def answers(url: str) -> bool:
    """Whether ``url`` answers with a 2xx now."""
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except OSError:
        return False
