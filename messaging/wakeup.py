"""How a relay that found too few outbox rows waits before it looks again: on PostgreSQL until a
transaction that added rows commits (LISTEN for the outbox trigger's NOTIFY), elsewhere for the
next poll."""

from __future__ import annotations

import threading
import time

import psycopg
import structlog
from django.db import connection

from common.lifecycle import backoff_delays
from events.models import OUTBOX_CHANNEL

logger = structlog.get_logger(__name__)

# How soon a relay waiting for a notification notices that it was asked to stop.
STOP_CHECK_INTERVAL = 0.25


class NewRowsWait:
    """How the relay waits for rows to publish when it found too few.

    While rows keep coming it sleeps ``poll_interval``, so that the next batch gathers what was
    written meanwhile. Once it found none, on PostgreSQL, it LISTENs, on an autocommit connection
    of its own (no transaction held open), for the NOTIFY the outbox's trigger sends when rows are
    committed, and looks anyway after ``idle_poll_interval`` without one; other databases poll.
    """

    def __init__(self, *, poll_interval: float, idle_poll_interval: float):
        self.listens = connection.vendor == "postgresql"
        self.poll_interval = poll_interval
        self.idle_poll_interval = idle_poll_interval
        self.listener: psycopg.Connection | None = None
        self.reconnect_delays = backoff_delays(start=0.2, ceiling=idle_poll_interval)

    def __call__(self, stop: threading.Event, *, published: int) -> None:
        if published or not self.listens:
            stop.wait(self.poll_interval)
        elif self.listener is None:
            self._listen(stop)
        else:
            try:
                self._wait_for_notification(stop)
            except psycopg.Error as exc:  # the server restarted, or ended this connection
                logger.warning("relay_listen_lost", error=str(exc))
                self.close()

    def _wait_for_notification(self, stop: threading.Event) -> None:
        """Until a notification comes, ``idle_poll_interval`` passes or ``stop`` is set."""
        deadline = time.monotonic() + self.idle_poll_interval
        while not stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
            if list(self.listener.notifies(timeout=min(remaining, STOP_CHECK_INTERVAL), stop_after=1)):
                # Read the ones queued behind it too: the relay's next look covers their rows.
                list(self.listener.notifies(timeout=0))
                return

    def _listen(self, stop: threading.Event) -> None:
        """Connect and LISTEN, then return at once: rows committed while nobody listened
        notified no one, so the relay looks now."""
        try:
            self.listener = psycopg.connect(**connection.get_connection_params(), autocommit=True)
            self.listener.execute(f"LISTEN {OUTBOX_CHANNEL}")
        except psycopg.Error as exc:
            self.close()
            delay = next(self.reconnect_delays)
            logger.warning("relay_listen_failed", error=str(exc), retry_in=delay)
            stop.wait(delay)
            return
        self.reconnect_delays = backoff_delays(start=0.2, ceiling=self.idle_poll_interval)
        logger.info("relay_listening", channel=OUTBOX_CHANNEL)

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
