"""Settling published events: those every handler applied are marked complete; those of settled
orders (``SETTLED_STATUSES``: paid, declined, cancelled, refunded, being cancelled) that a handler
missed are re-driven, per order."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass

from events.contract import ORDER_EVENTS
from events.models import OutboxEvent
from orders.models import OrderStatus
from recovery import selectors
from recovery.metrics import EVENTS_COMPLETED
from recovery.redrives import RedriveOutcome, redrive_unhandled_events
from recovery.selectors import SETTLED_STATUSES, UNFINISHED_STATUSES, Downstream, RedrivePolicy


@dataclass(frozen=True)
class SettledEvents:
    completed: int
    # What each order with events a handler missed came to.
    orders: Counter[RedriveOutcome]
    # The outbox id the next pass goes on from: 0 once the end was reached.
    cursor: int


def settle_events(
    *,
    policy: RedrivePolicy,
    downstream: Downstream,
    now: dt.datetime,
    after_id: int,
    max_batches: int,
    late_since: dt.datetime | None = None,
) -> SettledEvents:
    """Go through the published events older than the event deadline not yet known complete,
    from outbox id ``after_id``, at most ``max_batches`` batches: mark complete those every
    handler applied (or that need none), and re-drive per order those of settled orders that a
    handler missed (a notification, a refund's REFUND_REQUESTED). Events of orders still in
    CREATED or PROCESSING wait: the order's deadline covers them; so do those of parked orders,
    until an operator resumes or cancels the order.

    A large backlog of unchecked rows is worked through over several passes (the result's cursor).
    Unhandled events created after ``late_since`` are in flight (``selectors.late_since``): they
    are left for a later pass without a look.
    """
    older_than = now - dt.timedelta(seconds=policy.event_deadline)
    completed, outcomes = 0, Counter()
    for _ in range(max_batches):
        batch = selectors.incomplete_events(older_than=older_than, after_id=after_id, limit=policy.batch_size)
        if not batch:
            after_id = 0
            break
        after_id = batch[-1].id
        statuses = selectors.order_statuses(
            order_ids={event.key for event in batch if event.event_type in ORDER_EVENTS}
        )
        complete, waiting = [], []
        for event in batch:
            status = statuses.get(event.key)
            if event.event_type not in ORDER_EVENTS:
                complete.append(event)
            elif status in SETTLED_STATUSES:
                waiting.append(event)
            elif status == OrderStatus.FAILED:
                # Parked, an operator's now: its events and their inbox entries are kept until it is
                # resumed or cancelled, for its dead letter is re-published only as the outbox recorded it.
                continue
            elif status not in UNFINISHED_STATUSES:
                complete.append(event)  # no such order
        unhandled = {event.event_id: event for event in selectors.unhandled_events(events=waiting)}
        complete += [event for event in waiting if event.event_id not in unhandled]
        completed += OutboxEvent.objects.filter(
            event_id__in={event.event_id for event in complete}, completed_at__isnull=True
        ).update(completed_at=now)
        by_order: dict[str, list[OutboxEvent]] = {}
        for event in unhandled.values():
            if late_since is None or event.created_at <= late_since:
                by_order.setdefault(event.key, []).append(event)
        for order_id, events in by_order.items():
            outcomes[
                redrive_unhandled_events(order_id=order_id, events=events, policy=policy, downstream=downstream, now=now)
            ] += 1
    EVENTS_COMPLETED.inc(completed)
    return SettledEvents(completed=completed, orders=outcomes, cursor=after_id)
