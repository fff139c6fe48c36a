"""Graceful stop for the long-running commands (relay, bridge)."""

from __future__ import annotations

import signal
import threading

import structlog

logger = structlog.get_logger(__name__)


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT: the loop finishes its batch, then exits."""
    stop = threading.Event()

    def request_stop(signum, _frame):
        logger.info("stop_requested", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop


def backoff_delays(*, start: float, ceiling: float):
    """0 first, then start, 2*start, ... capped at ``ceiling``: how long to wait before each retry."""
    delay = 0.0
    while True:
        yield delay
        delay = min(ceiling, delay * 2 if delay else start)
