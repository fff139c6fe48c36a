"""The reconciler process: passes over the database at a fixed interval, re-driving what was lost
downstream, parking what cannot finish and deleting old history (``recovery.services``).

Several may run on PostgreSQL (each order is locked with SKIP LOCKED while it is handled); run
one on SQLite.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable

import structlog
from django.db import DatabaseError, connection
from django.utils import timezone

from common.metrics import serve_process_metrics
from recovery import selectors, services
from recovery.metrics import LAST_PASS, OLDEST_UNFINISHED_AGE, STUCK_ORDERS, UNFINISHED_ORDERS
from recovery.selectors import Downstream, RedrivePolicy

logger = structlog.get_logger(__name__)


def publish_order_gauges(*, policy: RedrivePolicy) -> None:
    for status, summary in selectors.unfinished_orders(policy=policy, now=timezone.now()).items():
        UNFINISHED_ORDERS.labels(status).set(summary.count)
        STUCK_ORDERS.labels(status).set(summary.stuck)
        OLDEST_UNFINISHED_AGE.labels(status).set(summary.oldest_age)


def run_reconciler(
    *,
    stop: threading.Event,
    policy: RedrivePolicy,
    read_downstream: Callable[[], Downstream],
    interval: float,
    retention: dt.timedelta,
    purge_batch_size: int,
    purge_max_batches: int,
    metrics_port: int,
) -> None:
    """Pass over the database every ``interval`` seconds until ``stop`` is set; each pass starts by
    reading how far the work downstream of the outbox has got (``read_downstream``)."""
    serve_process_metrics(port=metrics_port, process="reconciler")
    logger.info(
        "reconciler_started",
        interval=interval,
        stuck_after=policy.stuck_after,
        event_deadline=policy.event_deadline,
        max_redrives=policy.max_redrives,
        retention_days=retention.total_seconds() / 86400,
    )
    events_cursor = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            result = services.reconcile(
                policy=policy,
                downstream=read_downstream(),
                retention=retention,
                purge_batch_size=purge_batch_size,
                purge_max_batches=purge_max_batches,
                events_cursor=events_cursor,
            )
            events_cursor = result.events_cursor
            publish_order_gauges(policy=policy)
        except DatabaseError as exc:
            logger.warning("reconciler_database_error", error=str(exc))
            connection.close()  # a fresh connection on the next pass (the server may have restarted)
        else:
            LAST_PASS.set_to_current_time()
            if result.did_anything:
                logger.info(
                    "reconciler_pass",
                    orders=dict(result.orders),
                    claims_taken_over=result.claims_taken_over,
                    events_completed=result.events_completed,
                    purged=dict(result.purged),
                    seconds=round(time.monotonic() - started, 3),
                )
        stop.wait(max(0.0, interval - (time.monotonic() - started)))
    logger.info("reconciler_stopped")
