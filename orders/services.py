"""Writes to orders: creation and the order state machine."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import structlog
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from common.batches import apply_batch, failures
from events.contract import (
    ORDER_CANCELLED,
    ORDER_CREATED,
    ORDER_PAID,
    ORDER_PROCESSING,
    ORDER_REFUNDED,
    PAYMENT_FAILED,
    Event,
    InvalidEvent,
)
from events.services import claim_events, enqueue_dead_letter, enqueue_event, enqueue_events
from orders.metrics import observe_completion
from orders.models import Order, OrderItem, OrderStatus, OrderTimelineEntry
from orders.selectors import get_order_by_idempotency_key, order_snapshot

logger = structlog.get_logger(__name__)

EVENT_SOURCE = "order-api"
OPERATOR_SOURCE = "operator"
# A client's key is stored as "client-<its id>:<key>" in a 255-character column: 200 leaves
# room for any id (the views refuse longer keys).
IDEMPOTENCY_KEY_MAX_LENGTH = 200
CREATED_MESSAGE = "Order created"


class IdempotencyKeyReused(Exception):
    """The Idempotency-Key was already used for a request with a different body."""

    def __init__(self, order: Order):
        super().__init__(f"Idempotency-Key already used for order {order.id} with a different request body")
        self.order = order


@dataclass(frozen=True)
class OrderCreation:
    order: Order
    # False when an earlier request with the same Idempotency-Key and body made the order.
    created: bool


def order_total(*, items: list[dict[str, Any]]) -> Decimal:
    return sum((item["price"] * item["quantity"] for item in items), Decimal("0.00"))


def request_fingerprint(**request: Any) -> str:
    """A digest of a request's fields, whose Idempotency-Key a replay must match (an order's, a
    cancellation's, a refund's)."""
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()


def _replay(*, idempotency_key: str, fingerprint: str) -> OrderCreation | None:
    existing = get_order_by_idempotency_key(idempotency_key=idempotency_key)
    if existing is None:
        return None
    if existing.request_fingerprint != fingerprint:
        raise IdempotencyKeyReused(existing)
    logger.info("order_create_replayed", order_id=str(existing.id), idempotency_key=idempotency_key)
    return OrderCreation(order=existing, created=False)


def create_order(
    *,
    user_id: str,
    email: str,
    items: list[dict[str, Any]],
    correlation_id: str,
    idempotency_key: str | None = None,
    owner=None,
) -> OrderCreation:
    """Create an order, its items, its first timeline entry and its ORDER_CREATED outbox event atomically.

    With an ``idempotency_key`` a repeated request returns the first order: the insert hits the
    key's unique constraint (so do all but one of concurrent requests with the key) and the
    first order is read back. A new key, the common case, costs no read. Keys are per ``owner``
    (the API client): two clients using the same key get two orders.
    """
    if idempotency_key and owner is not None:
        idempotency_key = f"client-{owner.pk}:{idempotency_key}"
    fingerprint = request_fingerprint(user_id=user_id, email=email, items=items)
    try:
        with transaction.atomic():
            order = Order(
                user_id=user_id,
                email=email,
                status=OrderStatus.CREATED,
                total_amount=order_total(items=items),
                correlation_id=correlation_id,
                idempotency_key=idempotency_key or None,
                request_fingerprint=fingerprint,
                owner=owner,
            )
            event_name = next_event_name(order=order, event_type=ORDER_CREATED)
            order.save(force_insert=True)
            created_items = OrderItem.objects.bulk_create([OrderItem(order=order, **item) for item in items])
            event = enqueue_event(
                event_type=ORDER_CREATED,
                order=order_snapshot(order=order, items=created_items),
                correlation_id=correlation_id,
                source=EVENT_SOURCE,
                name=event_name,
            )
            OrderTimelineEntry.objects.create(
                order=order,
                status=order.status,
                event_type=ORDER_CREATED,
                event_id=event.event_id,
                message=CREATED_MESSAGE,
                created_at=order.created_at,
            )
    except IntegrityError:
        replay = _replay(idempotency_key=idempotency_key, fingerprint=fingerprint) if idempotency_key else None
        if replay is None:
            raise
        return replay
    logger.info(
        "order_created",
        order_id=str(order.id),
        event_id=str(event.event_id),
        user_id=user_id,
        total_amount=str(order.total_amount),
    )
    return OrderCreation(order=order, created=True)


def next_event_name(*, order: Order, event_type: str, details: dict[str, Any] | None = None) -> str:
    """Count the locked ``order``'s next event (the caller saves ``events_recorded``) and name it:
    its place in the order's history, its type, and the refund it is about, if any. The database
    restored to a backup counts from where the backup stood, so an event it makes again is named,
    and identified, as it was (``events.services.order_event_id``)."""
    order.events_recorded += 1
    refund_id = ((details or {}).get("refund") or {}).get("id", "")
    return "/".join(part for part in (str(order.events_recorded), event_type, refund_id) if part)


# The order state machine: every status change is one of these verbs, each allowed from the
# statuses it lists; nothing else changes an order's status.
@dataclass(frozen=True)
class Transition:
    name: str
    sources: frozenset[str]
    targets: frozenset[str]


def _verb(name: str, sources: set[str] | frozenset[str], targets: set[str]) -> Transition:
    return Transition(name=name, sources=frozenset(sources), targets=frozenset(targets))


START_PROCESSING = _verb("start processing", {OrderStatus.CREATED}, {OrderStatus.PROCESSING})
RECORD_PAYMENT = _verb("record a payment outcome", {OrderStatus.PROCESSING}, {OrderStatus.PAID, OrderStatus.PAYMENT_FAILED})
RETRY_PAYMENT = _verb("retry the payment", {OrderStatus.PAYMENT_FAILED}, {OrderStatus.PROCESSING})
# Where the pipeline is still at work on an order; a step that gives up parks it. CANCELLING is
# here while a charge is unresolved (its event is what the order awaits).
IN_PROGRESS_STATUSES = frozenset({OrderStatus.CREATED, OrderStatus.PROCESSING, OrderStatus.CANCELLING})
PARK = _verb("park", IN_PROGRESS_STATUSES, {OrderStatus.FAILED})
# A parked order goes back to where it was parked from when its event is re-published from dlq.
RESUME = _verb("resume", {OrderStatus.FAILED}, IN_PROGRESS_STATUSES)
# Paid orders whose charge has something left to refund.
REFUNDABLE_STATUSES = frozenset({OrderStatus.PAID, OrderStatus.PARTIALLY_REFUNDED})
# Nothing captured and no charge under way: cancelled at once.
CANCEL = _verb(
    "cancel",
    {OrderStatus.CREATED, OrderStatus.PROCESSING, OrderStatus.PAYMENT_FAILED, OrderStatus.FAILED},
    {OrderStatus.CANCELLED},
)
# A charge under way or money captured: cancelling until the charge is resolved and refunded.
REQUEST_CANCELLATION = _verb(
    "request a cancellation",
    {OrderStatus.PROCESSING, OrderStatus.FAILED, *REFUNDABLE_STATUSES},
    {OrderStatus.CANCELLING},
)
FINISH_CANCELLATION = _verb("finish a cancellation", {OrderStatus.CANCELLING}, {OrderStatus.CANCELLED})
RECORD_REFUND = _verb("record a refund", REFUNDABLE_STATUSES, {OrderStatus.PARTIALLY_REFUNDED, OrderStatus.REFUNDED})
VERBS = (
    START_PROCESSING,
    RECORD_PAYMENT,
    RETRY_PAYMENT,
    PARK,
    RESUME,
    CANCEL,
    REQUEST_CANCELLATION,
    FINISH_CANCELLATION,
    RECORD_REFUND,
)

# Derived from the verbs: where each status can go, and where the pipeline is done with an order.
TRANSITIONS: dict[str, frozenset[str]] = {
    status: frozenset(target for verb in VERBS if status in verb.sources for target in verb.targets)
    for status in OrderStatus.values
}
TERMINAL_STATUSES = frozenset(OrderStatus.values) - IN_PROGRESS_STATUSES
# Where an order may be cancelled (by one verb or the other).
CANCELLABLE_STATUSES = CANCEL.sources | REQUEST_CANCELLATION.sources
# The contract event each status change announces.
STATUS_EVENTS = {
    OrderStatus.PROCESSING: ORDER_PROCESSING,
    OrderStatus.PAID: ORDER_PAID,
    OrderStatus.PAYMENT_FAILED: PAYMENT_FAILED,
    OrderStatus.CANCELLED: ORDER_CANCELLED,
    OrderStatus.PARTIALLY_REFUNDED: ORDER_REFUNDED,
    OrderStatus.REFUNDED: ORDER_REFUNDED,
}
PROCESSING_HANDLER = "orders.start_processing"


# What an operator can do with an order in each status, told with every refused action.
WHAT_TO_DO_INSTEAD = {
    OrderStatus.CREATED: "it is waiting to be processed; if it is stuck, re-drive it (Unfinished orders), or cancel it",
    OrderStatus.PROCESSING: "a charge may be under way: wait for its outcome, or cancel it; if it is stuck, re-drive it (Unfinished orders)",
    OrderStatus.PAID: "it is paid: refund it, or cancel it (which refunds it)",
    OrderStatus.PAYMENT_FAILED: "retry its payment, or cancel it",
    OrderStatus.FAILED: "it is parked: re-publish its event from Dead letters to resume it, or cancel it",
    OrderStatus.CANCELLING: "it is being cancelled: its charge is being resolved or refunded",
    OrderStatus.CANCELLED: "it is cancelled and final",
    OrderStatus.PARTIALLY_REFUNDED: "part of it is refunded: refund more, or cancel it (which refunds the rest)",
    OrderStatus.REFUNDED: "it is refunded in full and final",
}


class InvalidTransition(Exception):
    def __init__(self, order: Order, to_status: str):
        super().__init__(
            f"Order {order.id} cannot go from {order.status} to {to_status}: {WHAT_TO_DO_INSTEAD[order.status]}"
        )
        self.order = order
        self.to_status = to_status


def can_transition(*, from_status: str, to_status: str) -> bool:
    return to_status in TRANSITIONS.get(from_status, frozenset())


def lock_orders(order_ids) -> dict[str, Order]:
    """``lock_order`` for several orders, by id, in one statement: those that exist, locked in the
    order of their ids (as every batch locks them), with their items at hand."""
    if not order_ids:
        return {}
    locked = locking_orders().filter(pk__in=order_ids).order_by("pk").prefetch_related("items")
    return {str(order.pk): order for order in locked}


def lock_order(order_id) -> Order:
    """The order, locked for the caller's transaction: every change to an order, and every money
    movement decided from its status, happens under this lock. Raises ``Order.DoesNotExist``."""
    return locking_orders().get(pk=order_id)


def locking_orders(**options):
    """Orders, each locked for the caller's transaction as it is read (``options``: skip_locked).

    PostgreSQL: FOR NO KEY UPDATE, which excludes every other lock of an order but not the
    foreign-key checks of rows that name it (a timeline entry, a notification, checked when
    their transaction commits): those never wait on the lock, so no cycle of waits forms
    between a transaction that holds orders and one that writes rows about others. An order's
    key never changes. SQLite serialises writers with its IMMEDIATE transactions."""
    return Order.objects.select_for_update(no_key=True, **options)


def _transition(*, order: Order, **change: Any):
    """Move a locked ``order`` as ``change`` says (``_transition_all``); returns its event, if any."""
    (event,) = _transition_all(orders=[order], **change)
    return event


def _transition_all(
    *,
    orders: list[Order],
    verb: Transition,
    to_status: str,
    message: str,
    source: str,
    attempt: int = 1,
    label: str | None = None,
    announce: bool = True,
    details: dict[str, Any] | None = None,
) -> list:
    """Move each locked order to ``to_status`` by ``verb``, with its timeline entry and, if any, its
    outbox event: one statement for each kind of row, whatever the number of orders.

    ``label`` names the timeline entry of a change that announces no event (default: the status);
    ``announce=False`` writes no event even for a status that has one (a resumed order);
    ``details``: the events' own fields (a refund's, say). Returns each order's event (or None).
    """
    for order in orders:
        if order.status not in verb.sources or to_status not in verb.targets:
            raise InvalidTransition(order, to_status)
    announce = announce and to_status in STATUS_EVENTS
    event_type = STATUS_EVENTS[to_status] if announce else label or to_status
    previous_statuses = [order.status for order in orders]
    now = timezone.now()
    names = []
    for order in orders:
        order.status, order.updated_at = to_status, now
        names.append(next_event_name(order=order, event_type=event_type, details=details) if announce else None)
    # The orders are locked: each one's count in the database is the one read, which ``names`` counted on.
    Order.objects.filter(pk__in=[order.pk for order in orders]).update(
        status=to_status, updated_at=now, events_recorded=F("events_recorded") + int(announce)
    )
    events: list = [None] * len(orders)
    if announce:
        events = enqueue_events(
            events=[
                dict(
                    event_type=event_type,
                    order=order_snapshot(order=order),
                    correlation_id=order.correlation_id,
                    source=source,
                    name=name,
                    attempt=attempt,
                    details=details,
                )
                for order, name in zip(orders, names)
            ]
        )
    OrderTimelineEntry.objects.bulk_create(
        [
            OrderTimelineEntry(
                order=order,
                status=to_status,
                previous_status=previous_status,
                event_type=event_type,
                event_id=event.event_id if event else None,
                message=message[:255],
            )
            for order, previous_status, event in zip(orders, previous_statuses, events)
        ]
    )
    for order, event in zip(orders, events):
        logger.info(
            "order_status_changed",
            order_id=str(order.id),
            correlation_id=order.correlation_id,
            status=to_status,
            event_id=str(event.event_id) if event else None,
        )
    return events


def start_processing(*, order_id, event_id, source: str) -> bool:
    """Apply ORDER_CREATED: CREATED -> PROCESSING. False if the event was applied before or the
    order moved on; ``InvalidEvent`` (nothing written) if there is no such order."""
    with transaction.atomic():
        (started,) = _start_processing_all(starts=[(order_id, event_id)], source=source)
    return started


def start_processing_together(*, events: list[Event], source: str) -> dict[int, Exception]:
    """``start_processing`` for the ORDER_CREATED ``events`` of several orders, in one transaction
    for all, one statement for each kind of row (``apply_batch``). The events come in the order of
    their orders' ids, the order every batch locks them in, so that two batches never wait on each
    other in a cycle. Returns what ``start_processing`` raised, by the event's position: each
    order's failure is its own."""
    outcomes = apply_batch(
        events,
        lambda some: _start_processing_all(starts=[(event.order_id, event.event_id) for event in some], source=source),
    )
    return failures(outcomes)


def _start_processing_all(*, starts: list[tuple[Any, Any]], source: str) -> list[bool]:
    """Each (order id, ORDER_CREATED event id) applied in the caller's transaction: whether it
    started its order's processing now."""
    claimed = claim_events(claims=[(PROCESSING_HANDLER, event_id) for _order_id, event_id in starts])
    orders = lock_orders([order_id for (order_id, _event_id), first in zip(starts, claimed) if first])
    starting = []
    for (order_id, _event_id), first in zip(starts, claimed):
        if not first:
            continue
        order = orders.get(str(order_id))
        if order is None:
            raise InvalidEvent("unknown_order", f"no order {order_id}")
        if order.status in START_PROCESSING.sources:
            starting.append(order)
        else:
            logger.info("order_processing_skipped", order_id=str(order_id), status=order.status)
    _transition_all(
        orders=starting,
        verb=START_PROCESSING,
        to_status=OrderStatus.PROCESSING,
        message="Order accepted for processing",
        source=source,
    )
    started = {str(order.pk) for order in starting}
    return [first and str(order_id) in started for (order_id, _event_id), first in zip(starts, claimed)]


def record_payment_outcome(*, order: Order, approved: bool, message: str, source: str, attempt: int = 1) -> None:
    """PROCESSING -> PAID or PAYMENT_FAILED, in the caller's (the payment's) transaction, on the
    order it locked (``lock_order``)."""
    _transition(
        order=order,
        verb=RECORD_PAYMENT,
        to_status=OrderStatus.PAID if approved else OrderStatus.PAYMENT_FAILED,
        message=message,
        source=source,
        attempt=attempt,
    )
    observe_completion(order)


def park_order(*, order_id, reason: str, error: str, original_event: dict[str, Any], source: str) -> bool:
    """A step gave up after its last retry: the order goes to FAILED and the event to the dlq topic.

    False if the order already reached a terminal status (nothing to park).
    """
    with transaction.atomic():
        order = lock_order(order_id)
        if order.status not in PARK.sources:
            return False
        _transition(
            order=order, verb=PARK, to_status=OrderStatus.FAILED, message=f"{reason}: {error}", source=source
        )
        observe_completion(order)
        enqueue_dead_letter(
            original=original_event,
            key=str(order.id),
            reason=reason,
            error=error,
            source=source,
            correlation_id=order.correlation_id,
        )
    logger.error("order_parked", order_id=str(order_id), reason=reason, error=error)
    return True


def record_order_event(*, order_id, status: str, event_type: str, event_id, message: str) -> None:
    """A timeline entry for an event about the order that does not change its status; ``status``:
    the order's status the event is about."""
    record_order_events(
        entries=[dict(order_id=order_id, status=status, event_type=event_type, event_id=event_id, message=message)]
    )


def record_order_events(*, entries: list[dict[str, Any]]) -> None:
    """``record_order_event`` for several entries (each the dict of its arguments), in one statement."""
    OrderTimelineEntry.objects.bulk_create(
        [
            OrderTimelineEntry(
                order_id=entry["order_id"],
                status=entry["status"],
                event_type=entry["event_type"],
                event_id=entry["event_id"],
                message=entry["message"][:255],
            )
            for entry in entries
        ]
    )


def payment_round(*, order: Order) -> int:
    """Which round of payment the order is in: 1, then one more for each operator's retry."""
    retries = order.timeline.filter(previous_status=OrderStatus.PAYMENT_FAILED, status=OrderStatus.PROCESSING).count()
    return retries + 1


def retry_payment(*, order_id, requested_by: str):
    """PAYMENT_FAILED -> PROCESSING for another charge, announced by an ORDER_PROCESSING event
    whose ``attempt`` counts the rounds; the bridge starts a charge for every round after the
    first, and the charge opens a new payment attempt with a new key."""
    with transaction.atomic():
        order = lock_order(order_id)
        attempt = payment_round(order=order) + 1
        event = _transition(
            order=order,
            verb=RETRY_PAYMENT,
            to_status=OrderStatus.PROCESSING,
            message=f"Payment retry, attempt {attempt}, requested by {requested_by}",
            source=OPERATOR_SOURCE,
            attempt=attempt,
        )
    logger.info("payment_retry_requested", order_id=str(order_id), attempt=attempt, requested_by=requested_by)
    return event


def change_status(
    *,
    order: Order,
    verb: Transition,
    to_status: str,
    message: str,
    source: str,
    details: dict[str, Any] | None = None,
    label: str | None = None,
):
    """A status change another app decides (payments: a cancellation, a refund), in its
    transaction on an order it locked (``lock_order``); its event, if the status has one, carries
    ``details``; ``label`` names the entry of a status that has none. Returns the event (or None)."""
    event = _transition(
        order=order, verb=verb, to_status=to_status, message=message, source=source, details=details, label=label
    )
    if to_status in TERMINAL_STATUSES:
        observe_completion(order)
    return event


def announce(*, order: Order, event_type: str, message: str, source: str, details: dict[str, Any] | None = None):
    """An event about a locked ``order`` that leaves its status as it is (a refund requested,
    failed, or done on an order being cancelled), with its timeline entry; returns the event."""
    event_name = next_event_name(order=order, event_type=event_type, details=details)
    order.save(update_fields=["events_recorded"])
    event = enqueue_event(
        event_type=event_type,
        order=order_snapshot(order=order),
        correlation_id=order.correlation_id,
        source=source,
        name=event_name,
        details=details,
    )
    record_order_event(
        order_id=order.pk, status=order.status, event_type=event_type, event_id=event.event_id, message=message
    )
    logger.info("order_event_announced", order_id=str(order.pk), event_type=event_type, event_id=str(event.event_id))
    return event


def _status_before_parking(order: Order) -> str:
    # From the parking change itself: entries about events (a notification, say) carry the
    # status they were written under, which can lag behind a concurrent change.
    entry = order.timeline.filter(status=OrderStatus.FAILED).exclude(previous_status="").order_by("-created_at", "-id").first()
    return entry.previous_status if entry else OrderStatus.CREATED


def resume_order(*, order_id, reason: str, requested_by: str) -> Order | None:
    """FAILED -> the status it was parked from, in the caller's transaction, announcing nothing
    (it was announced when first reached). The order, locked; None if there is no such order.
    An order that is not parked is returned as it is."""
    order = locking_orders().filter(pk=order_id).first()
    if order and order.status in RESUME.sources:
        _transition(
            order=order,
            verb=RESUME,
            to_status=_status_before_parking(order),
            message=f"Resumed by {requested_by} to {reason}",
            source=OPERATOR_SOURCE,
            label="RESUMED",
            announce=False,
        )
    return order
