"""The reconciler: one pass over the database composes the jobs of recovery (re-drives, settling
events, stale notification claims, webhook deliveries due, retention), and its process runs a pass at a fixed interval,
holding the payment provider's records against the database now and then.

Several may run on PostgreSQL (each order is locked with SKIP LOCKED while it is handled); run
one on SQLite.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from django.db import DatabaseError, connections
from django.utils import timezone

from common.metrics import serve_process_metrics
from notifications import services as notification_services
from payments.gateway import get_gateway
from recovery import selectors
from recovery.metrics import LAST_PASS, OLDEST_UNFINISHED_AGE, STUCK_ORDERS, UNFINISHED_ORDERS
from recovery.provider_records import check_provider_records
from recovery.redrives import RedriveOutcome, redrive_stuck_order
from recovery.retention import purge_history
from recovery.selectors import Downstream, RedrivePolicy
from recovery.settling import settle_events
from recovery.webhook_deliveries import dispatch_due_deliveries

logger = structlog.get_logger(__name__)

# Stuck orders looked at per pass, oldest first (those waiting out their backoff included).
STUCK_ORDERS_PER_PASS = 5000
# Stale notification claims taken over per pass, oldest first: each is a send to a mail server.
STALE_CLAIMS_PER_PASS = 100
# Webhook deliveries handed to send tasks per pass, the longest due first.
DUE_DELIVERIES_PER_PASS = 1000


@dataclass(frozen=True)
class ProviderCheck:
    """How often the provider's records are held against the database, and how far back."""

    interval: float
    lookback: dt.timedelta


@dataclass
class PassResult:
    orders: Counter[RedriveOutcome] = field(default_factory=Counter)
    # Notifications sent again after their sender died holding the claim.
    claims_taken_over: int = 0
    # Webhook deliveries whose attempt was due, handed to send tasks.
    webhooks_dispatched: int = 0
    events_completed: int = 0
    purged: Counter = field(default_factory=Counter)
    # The outbox id the next pass goes on checking events from.
    events_cursor: int = 0

    @property
    def did_anything(self) -> bool:
        return bool(
            sum(n for outcome, n in self.orders.items() if outcome != RedriveOutcome.SKIPPED)
            or self.claims_taken_over
            or self.webhooks_dispatched
            or self.events_completed
            or self.purged
        )


def reconcile(
    *,
    policy: RedrivePolicy,
    downstream: Downstream,
    retention: dt.timedelta,
    purge_batch_size: int,
    purge_max_batches: int,
    events_cursor: int = 0,
    max_event_batches: int = 20,
) -> PassResult:
    """One pass: stuck orders, stale notification claims, then unfinished events (from
    ``events_cursor``), then old history. ``downstream``, read just before, tells which published
    events may still be on their way."""
    now = timezone.now()
    result = PassResult()
    late_since = selectors.late_since(downstream=downstream, policy=policy, now=now)
    for order in selectors.stuck_orders(policy=policy, now=now, limit=STUCK_ORDERS_PER_PASS, late_since=late_since):
        if policy.due(redrives=order.redrive_count, last_redrive_at=order.last_redrive_at, now=now):
            result.orders[redrive_stuck_order(order_id=order.pk, policy=policy, downstream=downstream, now=now)] += 1
    result.claims_taken_over = notification_services.finish_stale_claims(now=now, limit=STALE_CLAIMS_PER_PASS)
    result.webhooks_dispatched = dispatch_due_deliveries(now=now, limit=DUE_DELIVERIES_PER_PASS)
    settled = settle_events(
        policy=policy,
        downstream=downstream,
        now=now,
        after_id=events_cursor,
        max_batches=max_event_batches,
        late_since=late_since,
    )
    result.orders.update(settled.orders)
    result.events_completed, result.events_cursor = settled.completed, settled.cursor
    result.purged = purge_history(retention=retention, batch_size=purge_batch_size, max_batches=purge_max_batches, now=now)
    return result


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
    provider_check: ProviderCheck,
) -> None:
    """Pass over the database every ``interval`` seconds until ``stop`` is set; each pass starts by
    reading how far the work downstream of the outbox has got (``read_downstream``). The first
    pass, and one every ``provider_check.interval`` s, also hold the provider's records against
    the database (``check_provider_records``)."""
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
    provider_checked_at: float | None = None
    while not stop.is_set():
        started = time.monotonic()
        try:
            if provider_checked_at is None or started - provider_checked_at >= provider_check.interval:
                check_provider_records(gateway=get_gateway(), since=timezone.now() - provider_check.lookback)
                provider_checked_at = started
            result = reconcile(
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
            # Fresh connections on the next pass, the provider's ledger's too: a server that restarted
            # leaves each alias's connection closed, and Django does not reopen one by itself.
            connections.close_all()
        else:
            LAST_PASS.set_to_current_time()
            if result.did_anything:
                logger.info(
                    "reconciler_pass",
                    orders=dict(result.orders),
                    claims_taken_over=result.claims_taken_over,
                    webhooks_dispatched=result.webhooks_dispatched,
                    events_completed=result.events_completed,
                    purged=dict(result.purged),
                    seconds=round(time.monotonic() - started, 3),
                )
        stop.wait(max(0.0, interval - (time.monotonic() - started)))
    logger.info("reconciler_stopped")
