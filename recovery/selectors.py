"""Reads for recovery: which orders are stuck, which events are not yet handled."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from django.db.models import Count, Exists, Max, Min, OuterRef, Q, QuerySet

from events.contract import ORDER_CREATED, ORDER_EVENTS, ORDER_PROCESSING, REFUND_REQUESTED
from events import selectors as event_selectors
from events.models import OutboxEvent
from notifications import services as notification_services
from orders import services as order_services
from orders.models import Order, OrderStatus
from payments import services as payment_services
from payments.models import Payment, PaymentStatus, Refund, RefundStatus
from recovery.models import Redrive

UNFINISHED_STATUSES = order_services.IN_PROGRESS_STATUSES
# Statuses whose events must still reach every handler: the customer is told the payment's outcome,
# the cancellation, each refund; a requested refund is made. A parked order's events wait for an
# operator. CANCELLING is also unfinished: its charge under way is the order's to resolve.
SETTLED_STATUSES = (order_services.TERMINAL_STATUSES - {OrderStatus.FAILED}) | {OrderStatus.CANCELLING}


@dataclass(frozen=True)
class RedrivePolicy:
    """When the reconciler re-drives, and when it stops trying."""

    stuck_after: dict[str, float]
    event_deadline: float
    max_redrives: int
    backoff: float
    backoff_max: float
    # Seconds a published event may stay in flight (ahead of the bridge, or handed to a queue
    # with a backlog) before it is re-driven anyway, however well the backlog drains.
    max_wait_in_flight: float
    # Seconds without any movement downstream after which nothing published counts as in flight.
    stalled_after: float
    batch_size: int = 500

    def wait_after(self, *, redrives: int) -> float:
        """Seconds to wait after the ``redrives``-th re-drive before the next one."""
        return min(self.backoff_max, self.backoff * 2 ** max(0, redrives - 1))

    def due(self, *, redrives: int, last_redrive_at: dt.datetime | None, now: dt.datetime) -> bool:
        return last_redrive_at is None or (now - last_redrive_at).total_seconds() >= self.wait_after(redrives=redrives)

    def stuck_since(self, *, status: str, now: dt.datetime) -> dt.datetime:
        return now - dt.timedelta(seconds=self.stuck_after[status])


def required_handlers(*, event_type: str) -> frozenset[str]:
    """The handlers that apply an event of this type whatever the order's state. (A charge
    depends on the state, so it is checked through the order's status instead.)"""
    handlers = set(notification_services.handlers_for(event_type=event_type))
    if event_type == ORDER_CREATED:
        handlers.add(order_services.PROCESSING_HANDLER)
    if event_type == REFUND_REQUESTED:
        handlers.add(payment_services.REFUND_HANDLER)
    return frozenset(handlers)


# How often an order was re-driven: events re-driven together (one moment) count once.
REDRIVE_COUNT = Count("redrives__created_at", distinct=True)


def stuck_orders(*, policy: RedrivePolicy, now: dt.datetime, limit: int, late_since: dt.datetime | None = None) -> list[Order]:
    """Orders past their status's deadline, oldest first, with ``redrive_count`` and ``last_redrive_at``;
    none created after ``late_since`` (``selectors.late_since``)."""
    past_deadline = Q()
    for status in UNFINISHED_STATUSES:
        past_deadline |= Q(status=status, updated_at__lt=policy.stuck_since(status=status, now=now))
    orders = Order.objects.filter(past_deadline)
    if late_since is not None:
        orders = orders.filter(created_at__lte=late_since)
    return list(
        orders
        .annotate(redrive_count=REDRIVE_COUNT, last_redrive_at=Max("redrives__created_at"))
        .order_by("updated_at")[:limit]
    )


def redrive_history(*, order_id) -> tuple[int, dt.datetime | None]:
    """How often the order was re-driven (events re-driven together count once), and when last."""
    history = Order.objects.filter(pk=order_id).aggregate(n=REDRIVE_COUNT, last=Max("redrives__created_at"))
    return history["n"], history["last"]


def event_redrive_history(*, event_ids: set[str]) -> dict[str, tuple[int, dt.datetime | None]]:
    """Per event of ``event_ids`` re-driven before: how often, and when last."""
    rows = Redrive.objects.filter(event_id__in=event_ids).values("event_id").annotate(n=Count("id"), last=Max("created_at"))
    return {str(row["event_id"]): (row["n"], row["last"]) for row in rows}


def awaited_event(*, order: Order) -> OutboxEvent | None:
    """The event whose handling moves an unfinished order on: ORDER_CREATED starts processing and,
    in the same chain, the first charge; an ORDER_PROCESSING of a later attempt starts that charge.
    An order being cancelled awaits only its charge under way, if any (its refunds are events of
    their own, which ``unhandled_events`` finds)."""
    events = OutboxEvent.objects.filter(key=str(order.id))
    if order.status == OrderStatus.CANCELLING and not order.payments.filter(status=PaymentStatus.PENDING).exists():
        return None
    if order.status in (OrderStatus.PROCESSING, OrderStatus.CANCELLING):
        latest = events.filter(event_type=ORDER_PROCESSING).order_by("-id").first()
        if latest and latest.payload["metadata"].get("attempt", 1) > 1:
            return latest
    return events.filter(event_type=ORDER_CREATED).order_by("-id").first()


def with_what_they_await(orders: QuerySet[Order]) -> QuerySet[Order]:
    """``orders`` annotated for ``what_it_awaits``: a charge under way, a refund under way or failed."""
    return orders.annotate(
        charge_under_way=Exists(Payment.objects.filter(order=OuterRef("pk"), status=PaymentStatus.PENDING)),
        refund_under_way=Exists(Refund.objects.filter(order=OuterRef("pk"), status=RefundStatus.REQUESTED)),
        refund_failed=Exists(Refund.objects.filter(order=OuterRef("pk"), status=RefundStatus.FAILED)),
    )


def what_it_awaits(order: Order) -> str:
    """What an unfinished order (annotated by ``with_what_they_await``) waits for, for an operator."""
    if order.status == OrderStatus.CREATED:
        return "processing"
    if order.status == OrderStatus.PROCESSING or order.charge_under_way:
        return "its charge"
    if order.refund_under_way:
        return "its refund"
    if order.refund_failed:
        return "an operator: retry its failed refund"
    return "nothing known"


def order_events(*, order_id) -> list[OutboxEvent]:
    """The order's status events, one row per event (a re-driven event has several)."""
    rows = OutboxEvent.objects.filter(key=str(order_id), event_type__in=ORDER_EVENTS).order_by("id")
    return list({row.event_id: row for row in rows}.values())


def is_waiting_in_outbox(*, event_id) -> bool:
    """True while a copy of the event is not yet published: the relay's work, not lost work."""
    return OutboxEvent.objects.filter(event_id=event_id, published_at__isnull=True).exists()


@dataclass(frozen=True)
class Downstream:
    """What the reconciler knows at the start of a pass about the work downstream of the outbox:
    how far it has got, and whether anything there has moved lately. The defaults: nothing held
    downstream (a test's world without Kafka and Celery)."""

    # The bridge's consumer group's committed offset (the next it reads) per (topic, partition);
    # None: Kafka did not answer.
    bridge_offsets: Mapping[tuple[str, int], int] | None = field(default_factory=dict)
    # Tasks waiting in the pipeline's Celery queue; None: the broker did not answer.
    queued_tasks: int | None = 0
    # When the Celery broker last started; None: unknown.
    broker_started_at: dt.datetime | None = None
    # Seconds since the reconciler last saw the work downstream move (the bridge's offsets
    # advance, a handler apply an event, the queue get shorter).
    stalled_for: float = 0.0
    # Seconds the queue has been seen empty without a break; 0 while it holds tasks.
    queue_empty_for: float = math.inf

    def stalled(self, *, policy: RedrivePolicy) -> bool:
        """Nothing downstream has moved for ``policy.stalled_after`` s."""
        return self.stalled_for >= policy.stalled_after

    @property
    def drained(self) -> bool:
        """The queue is empty and has stayed so for ``EMPTY_QUEUE_GRACE`` s."""
        return self.queued_tasks == 0 and self.queue_empty_for >= EMPTY_QUEUE_GRACE


# Tasks a worker took before its queue emptied are still being run: an empty queue is evidence of
# loss once it has stayed empty this long (two of the reconciler's passes).
EMPTY_QUEUE_GRACE = 10.0


def is_in_flight(*, event_id, downstream: Downstream, policy: RedrivePolicy, now: dt.datetime) -> bool:
    """True while a copy of the event is late rather than lost, so that a re-driven copy would
    only queue behind it: not yet published (the relay's work); or published, with the work
    downstream still moving, and either ahead of the bridge in Kafka (the group has not committed
    past its offset; or Kafka does not answer) or handed to a Celery queue that still holds tasks
    (or whose broker does not answer) and has not restarted since.

    The evidence of loss, each enough for a copy: nothing downstream has moved for
    ``policy.stalled_after`` s; the bridge has passed the copy and the queue has stayed empty
    for ``EMPTY_QUEUE_GRACE`` s; the
    broker started after the copy was published; the copy was published more than
    ``policy.max_wait_in_flight`` s ago (a last resort: a backlog that drains is waited for
    however long it takes, up to that). A copy whose offset is not recorded counts as delivered.
    """
    stalled = downstream.stalled(policy=policy)
    oldest = now - dt.timedelta(seconds=policy.max_wait_in_flight)
    copies = OutboxEvent.objects.filter(event_id=event_id).filter(Q(published_at__isnull=True) | Q(published_at__gte=oldest))
    for published_at, topic, partition, offset in copies.values_list("published_at", "topic", "kafka_partition", "kafka_offset"):
        if published_at is None:
            return True
        if stalled:
            continue
        if downstream.bridge_offsets is None:
            return True
        committed = downstream.bridge_offsets.get((topic, partition))
        if committed is None or offset is None:
            continue  # where Kafka put it, or how far the bridge got, is not known
        if committed <= offset:
            return True
        broker_restarted = downstream.broker_started_at is not None and downstream.broker_started_at > published_at
        if not broker_restarted and not downstream.drained:
            return True
    return False


def late_since(*, downstream: Downstream, policy: RedrivePolicy, now: dt.datetime) -> dt.datetime | None:
    """While a backlog drains (the pipeline's queue holds tasks, or just emptied, and the work
    moves), every copy of an event published after the moment returned is in flight
    (``is_in_flight``), and so is all work of an order created after it: a pass need not look at
    them one by one, which is what makes a long backlog cheap to wait for. None: no such moment.
    (A copy on a partition the bridge's group never committed on would count as delivered; it waits
    until the backlog drains.)"""
    if downstream.stalled(policy=policy) or downstream.drained:
        return None
    since = now - dt.timedelta(seconds=policy.max_wait_in_flight)
    return max(since, downstream.broker_started_at) if downstream.broker_started_at else since


def unhandled_events(*, events: list[OutboxEvent]) -> list[OutboxEvent]:
    """Those of ``events`` that a required handler has not applied."""
    required = {str(event.event_id): required_handlers(event_type=event.event_type) for event in events}
    done = event_selectors.applied(handlers=sorted(set().union(*required.values())), event_ids=set(required))
    return [
        event
        for event in events
        if any((handler, str(event.event_id)) not in done for handler in required[str(event.event_id)])
    ]


def incomplete_events(*, older_than: dt.datetime, after_id: int, limit: int) -> list[OutboxEvent]:
    """Published events not yet known to be complete, in write order from ``after_id``."""
    return list(
        OutboxEvent.objects.filter(
            completed_at__isnull=True, published_at__isnull=False, created_at__lt=older_than, id__gt=after_id
        )
        .order_by("id")
        .only("id", "event_id", "event_type", "key", "payload", "created_at")[:limit]
    )


def order_statuses(*, order_ids: set[str]) -> dict[str, str]:
    return {str(pk): status for pk, status in Order.objects.filter(pk__in=order_ids).values_list("pk", "status")}


@dataclass(frozen=True)
class UnfinishedStatus:
    count: int
    stuck: int
    oldest_age: float


def unfinished_orders(*, policy: RedrivePolicy, now: dt.datetime) -> dict[str, UnfinishedStatus]:
    """Per non-terminal status: how many orders, how many past the deadline, the oldest's age."""
    summary = {status: UnfinishedStatus(count=0, stuck=0, oldest_age=0.0) for status in UNFINISHED_STATUSES}
    for status in UNFINISHED_STATUSES:
        row = Order.objects.filter(status=status).aggregate(
            count=Count("id"),
            stuck=Count("id", filter=Q(updated_at__lt=policy.stuck_since(status=status, now=now))),
            oldest=Min("updated_at"),
        )
        oldest_age = (now - row["oldest"]).total_seconds() if row["oldest"] else 0.0
        summary[status] = UnfinishedStatus(count=row["count"], stuck=row["stuck"], oldest_age=oldest_age)
    return summary
