"""Recovery from the database: re-drive what was lost downstream, park what cannot finish, and
delete history nobody needs any more.

The database knows every event (outbox), every application of an event by a handler (inbox) and
every order's status and when it last changed. Kafka, the Celery broker and a worker may lose what
they hold; whatever they lose shows here as an order that stays in a non-terminal status, or an
event a handler never applied. Re-driving sends the awaited event again through the outbox under
its own event id: handlers that applied it do nothing (their inbox), so charge-once and
notify-once hold however often an event is re-driven.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field

import structlog
from django.db import connection, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from events.contract import Event, InvalidEvent, check_recorded, parse_event
from events.models import DeadLetter, InboxEntry, OutboxEvent
from events.selectors import recorded_payloads
from events.services import republish_event
from notifications import services as notification_services
from orders import services as order_services
from orders.models import Order, OrderStatus
from recovery import selectors
from recovery.metrics import EVENTS_COMPLETED, NOTIFICATIONS_GIVEN_UP, PARKED, REDRIVES, ROWS_PURGED
from recovery.models import Redrive, RedriveReason
from recovery.selectors import SETTLED_STATUSES, UNFINISHED_STATUSES, Downstream, RedrivePolicy

logger = structlog.get_logger(__name__)

RECONCILER = "reconciler"
REDRIVEN_ENTRY = "REDRIVEN"
STUCK_REASONS = {OrderStatus.CREATED: RedriveReason.STUCK_CREATED, OrderStatus.PROCESSING: RedriveReason.STUCK_PROCESSING}

# Stuck orders looked at per pass, oldest first (those waiting out their backoff included).
STUCK_ORDERS_PER_PASS = 5000
# Stale notification claims taken over per pass, oldest first: each is a send to a mail server.
STALE_CLAIMS_PER_PASS = 100

# What one order's turn in a pass came to.
REDRIVEN = "redriven"
PARKED_ORDER = "parked"
GAVE_UP_NOTIFICATIONS = "notifications_given_up"
SKIPPED = "skipped"


class NothingToRedrive(Exception):
    """An operator's re-drive was refused; the message says why and what to do instead."""


@dataclass
class PassResult:
    orders: Counter = field(default_factory=Counter)
    # Notifications sent again after their sender died holding the claim.
    claims_taken_over: int = 0
    events_completed: int = 0
    purged: Counter = field(default_factory=Counter)
    # The outbox id the next pass goes on checking events from.
    events_cursor: int = 0

    @property
    def did_anything(self) -> bool:
        return bool(
            sum(n for outcome, n in self.orders.items() if outcome != SKIPPED)
            or self.claims_taken_over
            or self.events_completed
            or self.purged
        )


def _lock_order(order_id) -> Order | None:
    """The order, locked for this transaction; None while another reconciler holds it.

    PostgreSQL: FOR UPDATE SKIP LOCKED, so reconcilers running at once share the work. SQLite
    serialises writers with its IMMEDIATE transactions (run one reconciler there).
    """
    orders = Order.objects.filter(pk=order_id)
    if connection.features.has_select_for_update_skip_locked:
        return orders.select_for_update(skip_locked=True).first()
    return orders.first()


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


def redrive_stuck_order(*, order_id, policy: RedrivePolicy, downstream: Downstream, now: dt.datetime) -> str:
    """Re-drive an order that stayed in CREATED or PROCESSING past its deadline, at most once per
    backoff step; after ``policy.max_redrives`` re-drives park it as FAILED with a dlq event.

    Skipped if it moved on meanwhile, is not yet due, is held by another reconciler, or its
    awaited event may still be on its way (``selectors.is_in_flight``): late work is not lost work.
    """
    with transaction.atomic():
        order = _lock_order(order_id)
        if order is None or order.status not in UNFINISHED_STATUSES:
            return SKIPPED
        if order.updated_at >= policy.stuck_since(status=order.status, now=now):
            return SKIPPED
        due, redrives = _due(order=order, policy=policy, now=now)
        event = selectors.awaited_event(order=order)
        if not due or event is None or selectors.is_in_flight(
            event_id=event.event_id, downstream=downstream, policy=policy, now=now
        ):
            return SKIPPED
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
            return PARKED_ORDER
        _redrive(
            order=order,
            events=[event],
            reason=STUCK_REASONS[order.status],
            requested_by=RECONCILER,
            note=f"{order.status} for {stuck_for} s, re-drive {redrives + 1} of {policy.max_redrives}",
            now=now,
        )
    return REDRIVEN


def redrive_unhandled_events(
    *, order_id, events: list[OutboxEvent], policy: RedrivePolicy, downstream: Downstream, now: dt.datetime
) -> str:
    """Re-drive the events of a paid or declined order that a handler never applied (a lost
    notification); after ``policy.max_redrives`` re-drives of the order, record their missing
    notifications FAILED, each with a dlq event."""
    with transaction.atomic():
        order = _lock_order(order_id)
        if order is None or order.status not in SETTLED_STATUSES:
            return SKIPPED
        due, redrives = _due(order=order, policy=policy, now=now)
        if not due:
            return SKIPPED
        events = [
            event
            for event in selectors.unhandled_events(events=events)
            if not selectors.is_in_flight(event_id=event.event_id, downstream=downstream, policy=policy, now=now)
        ]
        if not events:
            return SKIPPED
        if redrives >= policy.max_redrives:
            for event in events:
                notification_services.record_delivery_failure(
                    event=Event(event.payload), error=f"not handled after {redrives} re-drives"
                )
            transaction.on_commit(lambda: NOTIFICATIONS_GIVEN_UP.inc(len(events)))
            return GAVE_UP_NOTIFICATIONS
        _redrive(
            order=order,
            events=events,
            reason=RedriveReason.EVENT_NOT_HANDLED,
            requested_by=RECONCILER,
            note=f"not handled after {policy.event_deadline:g} s, re-drive {redrives + 1} of {policy.max_redrives}",
            now=now,
        )
    return REDRIVEN


def settle_events(
    *, policy: RedrivePolicy, downstream: Downstream, now: dt.datetime, after_id: int, max_batches: int
) -> tuple[int, Counter, int]:
    """Go through the published events older than the event deadline not yet known complete,
    from outbox id ``after_id``, at most ``max_batches`` batches: mark complete those every
    handler applied (or that need none), and re-drive per order those of paid or declined orders
    that a handler missed. Events of unfinished orders wait: the order's deadline covers them; so
    do those of parked orders, until an operator resumes or cancels the order.

    Returns (events completed, outcome per order, where the next pass goes on: 0 once the end was
    reached), so a large backlog of unchecked rows is worked through over several passes.
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
            order_ids={event.key for event in batch if event.event_type in selectors.ORDER_STATUS_EVENTS}
        )
        complete, waiting = [], []
        for event in batch:
            status = statuses.get(event.key)
            if event.event_type not in selectors.ORDER_STATUS_EVENTS:
                complete.append(event)
            elif status in SETTLED_STATUSES:
                waiting.append(event)
            elif status == OrderStatus.FAILED:
                # Parked, an operator's now: its events and their inbox entries are kept until it is
                # resumed or cancelled, for its dead letter is re-published only as the outbox recorded it.
                continue
            elif status not in UNFINISHED_STATUSES:
                complete.append(event)  # cancelled, or no such order
        unhandled = {event.event_id: event for event in selectors.unhandled_events(events=waiting)}
        complete += [event for event in waiting if event.event_id not in unhandled]
        completed += OutboxEvent.objects.filter(
            event_id__in={event.event_id for event in complete}, completed_at__isnull=True
        ).update(completed_at=now)
        by_order: dict[str, list[OutboxEvent]] = {}
        for event in unhandled.values():
            by_order.setdefault(event.key, []).append(event)
        for order_id, events in by_order.items():
            outcomes[
                redrive_unhandled_events(order_id=order_id, events=events, policy=policy, downstream=downstream, now=now)
            ] += 1
    EVENTS_COMPLETED.inc(completed)
    return completed, outcomes, after_id


def purge_history(*, retention: dt.timedelta, batch_size: int, max_batches: int, now: dt.datetime) -> Counter:
    """Delete published outbox rows of complete events, and inbox entries of events no incomplete
    outbox row still has, once older than ``retention``: ``batch_size`` rows per statement, so
    no lock is held for long. Timeline, payments and notifications are kept."""
    cutoff = now - retention
    still_needed = OutboxEvent.objects.filter(event_id=OuterRef("event_id"), completed_at__isnull=True)
    tables = {
        "outbox": OutboxEvent.objects.filter(completed_at__lt=cutoff, published_at__isnull=False).order_by("completed_at"),
        "inbox": InboxEntry.objects.filter(handled_at__lt=cutoff).filter(~Exists(still_needed)).order_by("handled_at"),
    }
    purged = Counter()
    for table, old_rows in tables.items():
        for _ in range(max_batches):
            ids = list(old_rows.values_list("id", flat=True)[:batch_size])
            if not ids:
                break
            _total, per_model = old_rows.model.objects.filter(pk__in=ids).delete()
            purged[table] += per_model.get(old_rows.model._meta.label, 0)
            if len(ids) < batch_size:
                break
    for table, count in purged.items():
        ROWS_PURGED.labels(table).inc(count)
    return purged


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
    for order in selectors.stuck_orders(policy=policy, now=now, limit=STUCK_ORDERS_PER_PASS):
        if policy.due(redrives=order.redrive_count, last_redrive_at=order.last_redrive_at, now=now):
            result.orders[redrive_stuck_order(order_id=order.pk, policy=policy, downstream=downstream, now=now)] += 1
    result.claims_taken_over = notification_services.finish_stale_claims(now=now, limit=STALE_CLAIMS_PER_PASS)
    result.events_completed, event_outcomes, result.events_cursor = settle_events(
        policy=policy, downstream=downstream, now=now, after_id=events_cursor, max_batches=max_event_batches
    )
    result.orders.update(event_outcomes)
    result.purged = purge_history(retention=retention, batch_size=purge_batch_size, max_batches=purge_max_batches, now=now)
    return result


def redrive_now(*, order_id, requested_by: str) -> list[OutboxEvent]:
    """An operator's re-drive: what the order awaits goes out again at once, whatever the
    deadlines and the reconciler's limit. Raises ``NothingToRedrive`` saying what to do instead."""
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_id)
        if order.status in UNFINISHED_STATUSES:
            awaited = selectors.awaited_event(order=order)
            events = [awaited] if awaited else []
        elif order.status in SETTLED_STATUSES:
            events = selectors.unhandled_events(events=selectors.order_events(order_id=order.pk))
            if not events:
                raise NothingToRedrive(f"Order {order.pk} is {order.status} and every handler applied its events: nothing to re-drive")
        else:
            raise NothingToRedrive(f"Order {order.pk} cannot be re-driven: {order_services.WHAT_TO_DO_INSTEAD[order.status]}")
        if not events:
            raise NothingToRedrive(f"Order {order.pk} has no event in the outbox to re-drive: cancel it")
        waiting = [event.event_type for event in events if selectors.is_waiting_in_outbox(event_id=event.event_id)]
        if waiting:
            raise NothingToRedrive(
                f"Order {order.pk}: its {', '.join(waiting)} still waits in the outbox for the relay: "
                "check that the relay runs and Kafka is reachable (metric outbox_backlog)"
            )
        _redrive(order=order, events=events, reason=RedriveReason.OPERATOR, requested_by=requested_by, note="re-drive now", now=timezone.now())
    return events


class DeadLetterAlreadyRepublished(Exception):
    def __init__(self, dead_letter: DeadLetter):
        super().__init__(
            f"Dead letter {dead_letter.pk} was re-published already, at {dead_letter.republished_at}: follow its "
            "order's timeline; if the event failed again, its new dead letter is the one to re-publish"
        )


# What an operator can do instead when a dead letter is not re-published, by the refusal's reason.
NOT_RECORDED = (
    "only an event the outbox recorded is re-published, and this is none (a message this service did not "
    "write, or one whose history was deleted after the retention period): leave it as the record of what "
    "was refused; if its order needs something, use the order's actions (retry payment, cancel, re-drive)"
)
NOT_AS_RECORDED = (
    "only an event exactly as the outbox recorded it is re-published: clear 'fixed value' to re-publish "
    "the original, or store in it the event's payload from Events › Outbox events"
)
REPUBLISH_REFUSALS = {"unknown_event": NOT_RECORDED, "event_mismatch": NOT_AS_RECORDED}


def recorded_event(dead_letter: DeadLetter) -> Event:
    """The event a dead letter re-publishes: its fixed value if set, else its value, which must
    be a contract event the outbox recorded under its id, exactly as recorded, and (when the dead
    letter knows its event id) that very event. Raises ``InvalidEvent`` saying why and what to do.

    The bridge trusts whatever the outbox holds, and a re-publish goes through the outbox: without
    this check a message the bridge refused as forged (unknown_event, event_mismatch), or a fixed
    value altered from the recorded event, would become trusted once re-published.
    """
    raw = (dead_letter.fixed_value or dead_letter.value).encode()
    try:
        event = parse_event(raw, max_bytes=len(raw) + 1)
    except InvalidEvent as exc:
        raise InvalidEvent(
            exc.reason,
            f"{exc.error}: store a corrected JSON event in 'fixed value', then re-publish; "
            "only the event exactly as the outbox recorded it (Events › Outbox events, its payload) is re-published",
        ) from None
    if dead_letter.event_id and event.event_id != dead_letter.event_id:
        raise InvalidEvent(
            "event_mismatch",
            f"the fixed value is event {event.event_id}, this dead letter is event {dead_letter.event_id}: {NOT_AS_RECORDED}",
        )
    try:
        check_recorded(event, recorded=recorded_payloads(event_ids={event.event_id}).get(event.event_id, []))
    except InvalidEvent as exc:
        raise InvalidEvent(exc.reason, f"{exc.error}: {REPUBLISH_REFUSALS.get(exc.reason, NOT_RECORDED)}") from None
    return event


def republish_dead_letter(*, dead_letter_id: int, requested_by: str) -> OutboxEvent:
    """Send a dead-lettered event (or its fixed value) to its topic again, only if the outbox
    recorded it (``recorded_event``; else nothing is written).

    A parked order resumes in the status it was parked from, so the handlers that had not applied
    the event do their part; those that had (their inbox holds the event id) do nothing again.
    Recorded in the order's timeline.
    """
    with transaction.atomic():
        dead_letter = DeadLetter.objects.select_for_update().get(pk=dead_letter_id)
        if dead_letter.republished_at:
            raise DeadLetterAlreadyRepublished(dead_letter)
        event = recorded_event(dead_letter)
        order = order_services.resume_order(
            order_id=event.order_id, reason=f"retry {event.type}", requested_by=requested_by
        )
        outbox_event = republish_event(event=event)
        dead_letter.republished_at = timezone.now()
        dead_letter.republished_by = requested_by
        dead_letter.republished_event = outbox_event
        dead_letter.save(update_fields=["republished_at", "republished_by", "republished_event"])
        if order:
            order_services.record_order_event(
                order_id=order.pk,
                status=order.status,
                event_type=event.type,
                event_id=event.event_id,
                message=f"Re-published from dlq by {requested_by} (was: {dead_letter.reason})",
            )
    logger.info("dead_letter_republished", **event.log_context(), requested_by=requested_by)
    return outbox_event
