"""What the reconciler's tests do to the database in place of the relay, the bridge and time, and
the orders they do it to."""

from __future__ import annotations

import datetime as dt

from django.db.models import F
from django.utils import timezone

from devtools.harness.sample_orders import create_test_order
from events.contract import Event
from events.models import OutboxEvent
from notifications import services as notification_services
from orders import services as order_services
from orders.models import Order, OrderStatus
from payments import services as payment_services
from payments.simulator import SimulatedGateway
from recovery import reconciler
from recovery.models import Redrive
from recovery.redrives import RedriveOutcome
from recovery.selectors import Downstream, RedrivePolicy

# Nothing held downstream: Kafka's offsets unrecorded, the Celery queue empty.
NOTHING_DOWNSTREAM = Downstream()
# Refunds as charges: decided by the ledger alone, never timing out nor refused as unavailable.
NO_REFUND_FAULTS = {"refund_timeout_rate": 0.0, "refund_failure_rate": 0.0}
APPROVE = SimulatedGateway(success_rate=1.0, timeout_rate=0.0, seed="recovery", **NO_REFUND_FAULTS)
DECLINE = SimulatedGateway(success_rate=0.0, timeout_rate=0.0, seed="recovery", **NO_REFUND_FAULTS)


def default_policy(*, max_redrives: int) -> RedrivePolicy:
    """The reconciler's default deadlines and backoff, with a smaller limit for short tests."""
    return RedrivePolicy(
        stuck_after={OrderStatus.CREATED: 30.0, OrderStatus.PROCESSING: 45.0, OrderStatus.CANCELLING: 45.0},
        event_deadline=45.0,
        max_redrives=max_redrives,
        backoff=15.0,
        backoff_max=60.0,
        max_wait_in_flight=1800.0,
        stalled_after=60.0,
    )


def publish_all(*, partition: int | None = None, offset: int | None = None) -> None:
    """What the relay does once Kafka confirmed the rows (put, if given, at ``partition`` and ``offset``)."""
    OutboxEvent.objects.filter(published_at__isnull=True).update(
        published_at=timezone.now(), kafka_partition=partition, kafka_offset=offset
    )


def age(*, seconds: float) -> None:
    """Move every clock of the data ``seconds`` into the past, as if that much time went by."""
    delta = dt.timedelta(seconds=seconds)
    clocks = ((Order, "created_at"), (Order, "updated_at"), (OutboxEvent, "created_at"), (OutboxEvent, "published_at"), (Redrive, "created_at"))
    for model, field in clocks:
        model.objects.update(**{field: F(field) - delta})


POLICY = default_policy(max_redrives=3)
# One re-drive, then give up: the shortest way to the reconciler's limit.
ONE_REDRIVE = default_policy(max_redrives=1)


def reconcile(
    policy: RedrivePolicy = POLICY, *, downstream: Downstream = NOTHING_DOWNSTREAM, retention_days: float = 7.0
) -> reconciler.PassResult:
    """One pass of the reconciler."""
    return reconciler.reconcile(
        policy=policy,
        downstream=downstream, retention=dt.timedelta(days=retention_days), purge_batch_size=100, purge_max_batches=10
    )


def new_order() -> Order:
    return create_test_order(user_id="rec", email="rec@example.com", correlation_id="corr-rec")


def created_event(order: Order) -> dict:
    return OutboxEvent.objects.filter(key=str(order.id), event_type="ORDER_CREATED").first().payload


def copies(event_id) -> int:
    return OutboxEvent.objects.filter(event_id=event_id).count()


def settle(order: Order, gateway: SimulatedGateway = APPROVE) -> Order:
    """Run every step of the pipeline for the order in process, notifications included."""
    envelope = created_event(order)
    order_services.start_processing(order_id=order.id, event_id=envelope["event_id"], source="test")
    payment_services.charge_order(order_id=order.id, event_id=envelope["event_id"], source="test", gateway=gateway)
    for event in OutboxEvent.objects.filter(key=str(order.id), event_type__in=notification_services.SUBJECTS):
        notification_services.send_event_notifications(event=Event(event.payload))
    order.refresh_from_db()
    return order


def re_drive_up_to_the_limit() -> None:
    """Take the events a handler missed through ``ONE_REDRIVE``'s one re-drive, to the moment its
    next pass gives them up."""
    publish_all()
    age(seconds=ONE_REDRIVE.event_deadline + 1)
    assert reconcile(ONE_REDRIVE).orders == {RedriveOutcome.REDRIVEN: 1}
    publish_all()
    age(seconds=ONE_REDRIVE.wait_after(redrives=1))
