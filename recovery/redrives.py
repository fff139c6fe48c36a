"""Re-drives: what was lost downstream is sent again from the database, and what cannot finish is
parked.

The database knows every event (outbox), every application of an event by a handler (inbox) and
every order's status and when it last changed. Kafka, the Celery broker and a worker may lose what
they hold; whatever they lose shows here as an order that stays in a non-terminal status, or an
event a handler never applied. Re-driving sends the awaited event again through the outbox under
its own event id: handlers that applied it do nothing (their inbox), so charge-once and
notify-once hold however often an event is re-driven.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

import structlog
from django.db import connection, transaction
from django.utils import timezone

from events.contract import REFUND_REQUESTED, Event
from events.models import OutboxEvent
from events.services import republish_event
from notifications import services as notification_services
from orders import services as order_services
from orders.models import Order, OrderStatus
from payments import services as payment_services
from recovery import selectors
from recovery.metrics import NOTIFICATIONS_GIVEN_UP, PARKED, REDRIVES
from recovery.models import Redrive, RedriveReason
from recovery.selectors import SETTLED_STATUSES, UNFINISHED_STATUSES, Downstream, RedrivePolicy

logger = structlog.get_logger(__name__)

RECONCILER = "reconciler"
REDRIVEN_ENTRY = "REDRIVEN"
STUCK_REASONS = {
    OrderStatus.CREATED: RedriveReason.STUCK_CREATED,
    OrderStatus.PROCESSING: RedriveReason.STUCK_PROCESSING,
    OrderStatus.CANCELLING: RedriveReason.STUCK_CANCELLING,
}


class RedriveOutcome(StrEnum):
    """What one order's turn in a pass came to; the values are the keys of the pass's log line."""

    REDRIVEN = "redriven"
    PARKED = "parked"
    # Events not handled after the last re-drive, given up (``_give_up_event``).
    GIVEN_UP = "given_up"
    # Moved on meanwhile, not yet due, held by another reconciler, or its event may still be on its way.
    SKIPPED = "skipped"


# What an order being cancelled with nothing to re-drive waits for.
CANCELLING_WAITS = "its refund is under way, or failed and waits for an operator to retry it (the refund's Retry action)"


class NothingToRedrive(Exception):
    """An operator's re-drive was refused; the message says why and what to do instead."""


def _lock_order(order_id) -> Order | None:
    """The order, locked for this transaction; None while another reconciler holds it.

    PostgreSQL: SKIP LOCKED, so reconcilers running at once share the work. SQLite serialises
    writers with its IMMEDIATE transactions (run one reconciler there).
    """
    if connection.features.has_select_for_update_skip_locked:
        return order_services.locking_orders(skip_locked=True).filter(pk=order_id).first()
    return Order.objects.filter(pk=order_id).first()


def _redrive(*, order: Order, events: list[OutboxEvent], reason: str, requested_by: str, note: str, now: dt.datetime) -> None:
    """Send ``events`` again through the outbox under their own ids, recorded in the order's timeline."""
    for event in events:
        republish_event(event=Event(event.payload))
        Redrive.objects.create(
            order=order,
            event_id=event.event_id,
            event_type=event.event_type,
            reason=reason,
            requested_by=requested_by,
            created_at=now,
        )
        order_services.record_order_event(
            order_id=order.pk,
            status=order.status,
            event_type=REDRIVEN_ENTRY,
            event_id=event.event_id,
            message=f"Re-drove {event.event_type} ({note}), by {requested_by}",
        )
        logger.info(
            "order_redriven",
            order_id=str(order.pk),
            event_id=str(event.event_id),
            event_type=event.event_type,
            correlation_id=order.correlation_id,
            reason=reason,
            requested_by=requested_by,
        )
    transaction.on_commit(lambda: REDRIVES.labels(reason).inc(len(events)))


def _due(*, order: Order, policy: RedrivePolicy, now: dt.datetime) -> tuple[bool, int]:
    redrives, last = selectors.redrive_history(order_id=order.pk)
    return policy.due(redrives=redrives, last_redrive_at=last, now=now), redrives


def redrive_stuck_order(*, order_id, policy: RedrivePolicy, downstream: Downstream, now: dt.datetime) -> RedriveOutcome:
    """Re-drive an order that stayed in CREATED, PROCESSING or CANCELLING (a charge under way: its
    charge's event; one awaiting only refunds is left to ``redrive_unhandled_events``) past its
    deadline, at most once per backoff step; after ``policy.max_redrives`` re-drives park it as FAILED with a dlq event.

    Skipped if it moved on meanwhile, is not yet due, is held by another reconciler, or its
    awaited event may still be on its way (``selectors.is_in_flight``): late work is not lost work.
    """
    with transaction.atomic():
        order = _lock_order(order_id)
        if order is None or order.status not in UNFINISHED_STATUSES:
            return RedriveOutcome.SKIPPED
        if order.updated_at >= policy.stuck_since(status=order.status, now=now):
            return RedriveOutcome.SKIPPED
        due, redrives = _due(order=order, policy=policy, now=now)
        event = selectors.awaited_event(order=order)
        if not due or event is None or selectors.is_in_flight(
            event_id=event.event_id, downstream=downstream, policy=policy, now=now
        ):
            return RedriveOutcome.SKIPPED
        stuck_for = round((now - order.updated_at).total_seconds())
        if redrives >= policy.max_redrives:
            order_services.park_order(
                order_id=order.pk,
                reason="redrive_limit",
                error=f"stuck in {order.status} for {stuck_for} s after {redrives} re-drives",
                original_event=event.payload,
                source=RECONCILER,
            )
            transaction.on_commit(PARKED.inc)
            return RedriveOutcome.PARKED
        _redrive(
            order=order,
            events=[event],
            reason=STUCK_REASONS[order.status],
            requested_by=RECONCILER,
            note=f"{order.status} for {stuck_for} s, re-drive {redrives + 1} of {policy.max_redrives}",
            now=now,
        )
    return RedriveOutcome.REDRIVEN


def redrive_unhandled_events(
    *, order_id, events: list[OutboxEvent], policy: RedrivePolicy, downstream: Downstream, now: dt.datetime
) -> RedriveOutcome:
    """Re-drive the events of a settled order (``SETTLED_STATUSES``) that a handler never applied
    (a lost notification, a refund's lost event), each at most once per backoff step; after
    ``policy.max_redrives`` re-drives of an event, give it up (``_give_up_event``). Re-drives are
    counted per event: a refund asked for long after the order was paid gets its own."""
    with transaction.atomic():
        order = _lock_order(order_id)
        if order is None or order.status not in SETTLED_STATUSES:
            return RedriveOutcome.SKIPPED
        history = selectors.event_redrive_history(event_ids={str(event.event_id) for event in events})
        redrives, last = {}, {}
        for event in events:
            redrives[event.event_id], last[event.event_id] = history.get(str(event.event_id), (0, None))
        due = [
            event
            for event in selectors.unhandled_events(events=events)
            if policy.due(redrives=redrives[event.event_id], last_redrive_at=last[event.event_id], now=now)
            and not selectors.is_in_flight(event_id=event.event_id, downstream=downstream, policy=policy, now=now)
        ]
        spent = [event for event in due if redrives[event.event_id] >= policy.max_redrives]
        for event in spent:
            error = f"not handled after {redrives[event.event_id]} re-drives"
            _give_up_event(order=order, event=Event(event.payload), error=error)
        again = [event for event in due if event not in spent]
        if again:
            most = max(redrives[event.event_id] for event in again)
            _redrive(
                order=order,
                events=again,
                reason=RedriveReason.EVENT_NOT_HANDLED,
                requested_by=RECONCILER,
                note=f"not handled after {policy.event_deadline:g} s, re-drive {most + 1} of {policy.max_redrives}",
                now=now,
            )
    if again:
        return RedriveOutcome.REDRIVEN
    return RedriveOutcome.GIVEN_UP if spent else RedriveOutcome.SKIPPED


def _give_up_event(*, order: Order, event: Event, error: str) -> None:
    """An event no handler applied after the last re-drive: a refund is failed (an operator may
    retry it; counted in refunds_total), a notification recorded FAILED; each with a dlq event."""
    if event.type == REFUND_REQUESTED:
        payment_services.give_up_refund(
            order_id=order.pk,
            refund_id=event.refund["id"],
            error=error,
            original_event=event.payload,
            reason="redrive_limit",
            source=RECONCILER,
        )
    else:
        notification_services.record_delivery_failure(event=event, error=error)
        transaction.on_commit(NOTIFICATIONS_GIVEN_UP.inc)


def redrive_now(*, order_id, requested_by: str) -> list[OutboxEvent]:
    """An operator's re-drive: what the order awaits goes out again at once, whatever the
    deadlines and the reconciler's limit. Raises ``NothingToRedrive`` saying what to do instead."""
    with transaction.atomic():
        order = order_services.lock_order(order_id)
        # An order being cancelled awaits its charge under way if it has one, else its refunds' events.
        awaited = selectors.awaited_event(order=order) if order.status in UNFINISHED_STATUSES else None
        if awaited is not None:
            events = [awaited]
        elif order.status in SETTLED_STATUSES:
            events = selectors.unhandled_events(events=selectors.order_events(order_id=order.pk))
            if not events:
                raise NothingToRedrive(
                    f"Order {order.pk} is {order.status} and every handler applied its events: nothing to re-drive"
                    + (f"; {CANCELLING_WAITS}" if order.status == OrderStatus.CANCELLING else "")
                )
        elif order.status in UNFINISHED_STATUSES:
            raise NothingToRedrive(f"Order {order.pk} has no event in the outbox to re-drive: cancel it")
        else:
            raise NothingToRedrive(f"Order {order.pk} cannot be re-driven: {order_services.WHAT_TO_DO_INSTEAD[order.status]}")
        waiting = [event.event_type for event in events if selectors.is_waiting_in_outbox(event_id=event.event_id)]
        if waiting:
            raise NothingToRedrive(
                f"Order {order.pk}: its {', '.join(waiting)} still waits in the outbox for the relay: "
                "check that the relay runs and Kafka is reachable (metric outbox_backlog)"
            )
        _redrive(order=order, events=events, reason=RedriveReason.OPERATOR, requested_by=requested_by, note="re-drive now", now=timezone.now())
    return events
