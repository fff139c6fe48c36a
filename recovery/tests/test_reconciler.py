"""The reconciler against the real database: what it re-drives, when, how often, and what it parks."""

from __future__ import annotations

import datetime as dt
import json
import threading

import pytest
from django.db import connection, transaction
from django.utils import timezone
from prometheus_client import REGISTRY

from devtools.harness.sample_orders import create_test_order
from events import services as event_services
from events.contract import Event
from events.models import InboxEntry, OutboxEvent
from notifications import services as notification_services
from notifications.models import Notification, NotificationStatus
from orders import services as order_services
from orders.models import Order, OrderStatus, OrderTimelineEntry
from payments import services as payment_services
from payments.gateway import SimulatedGateway
from recovery import services
from recovery.models import Redrive, RedriveReason
from recovery.reconciler import publish_order_gauges
from recovery.selectors import Downstream, RedrivePolicy
from recovery.tests.support import age, default_policy, publish_all

pytestmark = pytest.mark.django_db

POLICY = default_policy(max_redrives=3)
# Kafka and the Celery broker told the reconciler nothing: what it did before it asked them.
NOTHING_KNOWN = Downstream()
APPROVE = SimulatedGateway(success_rate=1.0, timeout_rate=0.0, seed="recovery")
DECLINE = SimulatedGateway(success_rate=0.0, timeout_rate=0.0, seed="recovery")


def reconcile(
    policy: RedrivePolicy = POLICY, *, downstream: Downstream = NOTHING_KNOWN, retention_days: float = 7.0
) -> services.PassResult:
    return services.reconcile(
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


def test_an_order_stuck_in_created_gets_its_event_again_under_its_own_id():
    order = new_order()
    event_id = created_event(order)["event_id"]
    publish_all()
    age(seconds=29)
    assert not reconcile().orders  # not past its deadline yet

    age(seconds=2)
    result = reconcile()

    assert result.orders == {services.REDRIVEN: 1}
    assert copies(event_id) == 2
    assert OutboxEvent.objects.filter(event_id=event_id, published_at__isnull=True).count() == 1
    redrive = Redrive.objects.get(order=order)
    assert (str(redrive.event_id), redrive.reason, redrive.requested_by) == (event_id, RedriveReason.STUCK_CREATED, "reconciler")
    entry = OrderTimelineEntry.objects.get(order=order, event_type=services.REDRIVEN_ENTRY)
    assert str(entry.event_id) == event_id
    assert "re-drive 1 of 3" in entry.message
    order.refresh_from_db()
    assert order.status == OrderStatus.CREATED  # re-driving changes no status


def test_an_event_still_waiting_in_the_outbox_is_the_relays_work_not_lost_work():
    order = new_order()
    age(seconds=600)
    assert reconcile().orders == {services.SKIPPED: 1}
    assert copies(created_event(order)["event_id"]) == 1


def stuck_with_its_event_at(*, partition: int, offset: int) -> str:
    """An order stuck in CREATED for a minute, its ORDER_CREATED published at ``partition`` and
    ``offset`` of the orders topic; the event's id."""
    event_id = created_event(new_order())["event_id"]
    publish_all(partition=partition, offset=offset)
    age(seconds=60)
    return event_id


def test_an_event_still_ahead_of_the_bridge_in_kafka_is_late_not_lost():
    event_id = stuck_with_its_event_at(partition=1, offset=41)
    # 41: the next offset the bridge reads is the event's.
    assert reconcile(downstream=Downstream(bridge_offsets={("orders", 1): 41})).orders == {services.SKIPPED: 1}
    assert copies(event_id) == 1
    # Another partition's progress says nothing about this one.
    assert reconcile(downstream=Downstream(bridge_offsets={("orders", 0): 500})).orders == {services.REDRIVEN: 1}
    assert copies(event_id) == 2


def test_an_event_the_bridge_read_past_is_re_driven_unless_the_celery_queue_holds_a_backlog():
    event_id = stuck_with_its_event_at(partition=1, offset=41)
    passed = {("orders", 1): 42}
    assert reconcile(downstream=Downstream(bridge_offsets=passed, queued_tasks=350)).orders == {services.SKIPPED: 1}
    assert reconcile(downstream=Downstream(bridge_offsets=passed, queued_tasks=0)).orders == {services.REDRIVEN: 1}
    assert copies(event_id) == 2


def test_an_event_in_flight_for_too_long_is_re_driven_as_a_broker_may_have_lost_it():
    event_id = stuck_with_its_event_at(partition=1, offset=41)
    ahead = Downstream(bridge_offsets={("orders", 1): 41}, queued_tasks=350)
    age(seconds=POLICY.max_wait_in_flight - 61)
    assert reconcile(downstream=ahead).orders == {services.SKIPPED: 1}

    age(seconds=2)
    assert reconcile(downstream=ahead).orders == {services.REDRIVEN: 1}
    assert copies(event_id) == 2


def test_re_drives_back_off_then_the_order_is_parked_with_a_dead_letter():
    order = new_order()
    event_id = created_event(order)["event_id"]
    publish_all()
    age(seconds=31)
    waits = []
    for redrive in range(1, 4):
        assert reconcile().orders == {services.REDRIVEN: 1}
        publish_all()
        assert not reconcile().orders  # waiting out its backoff
        wait = POLICY.wait_after(redrives=redrive)
        waits.append(wait)
        age(seconds=wait - 1)
        assert not reconcile().orders
        age(seconds=1)
    assert waits == [15.0, 30.0, 60.0]

    assert reconcile().orders == {services.PARKED_ORDER: 1}

    order.refresh_from_db()
    assert order.status == OrderStatus.FAILED
    assert Redrive.objects.filter(order=order).count() == 3
    dead_letter = OutboxEvent.objects.get(key=str(order.id), event_type="DEAD_LETTER")
    assert dead_letter.headers["dlq_reason"] == "redrive_limit"
    assert "stuck in CREATED" in dead_letter.headers["dlq_error"]
    assert dead_letter.payload["event_id"] == event_id
    publish_all()
    age(seconds=600)
    assert not reconcile().orders  # parked: an operator's now


def test_an_order_stuck_in_processing_gets_the_event_that_starts_its_charge():
    order = new_order()
    envelope = created_event(order)
    order_services.start_processing(order_id=order.id, event_id=envelope["event_id"], source="test")
    publish_all()
    age(seconds=46)

    assert reconcile().orders == {services.REDRIVEN: 1}
    # The first charge is the second step of ORDER_CREATED's chain.
    assert Redrive.objects.get(order=order).event_type == "ORDER_CREATED"
    assert Redrive.objects.get(order=order).reason == RedriveReason.STUCK_PROCESSING


def test_a_payment_retry_stuck_in_processing_gets_its_own_attempts_event():
    order = settle(new_order(), DECLINE)
    assert order.status == OrderStatus.PAYMENT_FAILED
    retry = order_services.retry_payment(order_id=order.id, requested_by="ops")
    publish_all()
    age(seconds=46)

    reconcile()

    redrive = Redrive.objects.get(order=order)
    assert (redrive.event_type, redrive.event_id) == ("ORDER_PROCESSING", retry.event_id)
    assert OutboxEvent.objects.filter(event_id=retry.event_id).last().payload["metadata"]["attempt"] == 2


def test_re_driving_an_applied_event_charges_and_notifies_nothing_again():
    order = settle(new_order())
    sent = Notification.objects.filter(order=order).count()
    envelope = created_event(order)

    # The re-driven event reaching every handler again, as the bridge would hand it on.
    assert not order_services.start_processing(order_id=order.id, event_id=envelope["event_id"], source="test")
    assert payment_services.charge_order(order_id=order.id, event_id=envelope["event_id"], source="test", gateway=APPROVE) is None
    assert notification_services.send_event_notifications(event=Event(envelope)) == []

    assert order.payments.count() == 1
    assert Notification.objects.filter(order=order).count() == sent


def paid_without_its_last_notification() -> tuple[Order, OutboxEvent]:
    """A paid order whose ORDER_CREATED and ORDER_PROCESSING were told, and its ORDER_PAID event,
    whose notification never came."""
    order = new_order()
    envelope = created_event(order)
    order_services.start_processing(order_id=order.id, event_id=envelope["event_id"], source="test")
    payment_services.charge_order(order_id=order.id, event_id=envelope["event_id"], source="test", gateway=APPROVE)
    for event in OutboxEvent.objects.filter(key=str(order.id), event_type__in=["ORDER_CREATED", "ORDER_PROCESSING"]):
        notification_services.send_event_notifications(event=Event(event.payload))
    return order, OutboxEvent.objects.get(key=str(order.id), event_type="ORDER_PAID")


def test_complete_events_are_marked_and_a_missing_notification_is_re_driven():
    done = settle(new_order())
    missing, paid_event = paid_without_its_last_notification()
    publish_all()
    age(seconds=46)

    result = reconcile()

    assert result.orders == {services.REDRIVEN: 1}
    assert Redrive.objects.get(order=missing).event_id == paid_event.event_id
    assert Redrive.objects.get(order=missing).reason == RedriveReason.EVENT_NOT_HANDLED
    assert not OutboxEvent.objects.filter(key=str(done.id), completed_at__isnull=True).exists()
    assert OutboxEvent.objects.filter(event_id=paid_event.event_id, completed_at__isnull=True).exists()

    notification_services.send_event_notifications(event=Event(paid_event.payload))
    publish_all()
    assert reconcile().events_completed == 2  # the event and its re-driven copy
    assert not OutboxEvent.objects.filter(completed_at__isnull=True).exclude(event_type="NOTIFICATION_SENT").exists()


def test_a_notification_event_still_ahead_of_the_bridge_is_not_re_driven():
    order, paid_event = paid_without_its_last_notification()
    publish_all(partition=2, offset=7)
    age(seconds=46)

    assert reconcile(downstream=Downstream(bridge_offsets={("payments", 2): 7})).orders == {services.SKIPPED: 1}
    assert not Redrive.objects.filter(order=order).exists()
    assert reconcile(downstream=Downstream(bridge_offsets={("payments", 2): 8})).orders == {services.REDRIVEN: 1}
    assert Redrive.objects.get(order=order).event_id == paid_event.event_id


def test_a_notification_missing_after_the_last_re_drive_is_recorded_failed_with_a_dead_letter():
    order = new_order()
    envelope = created_event(order)
    order_services.start_processing(order_id=order.id, event_id=envelope["event_id"], source="test")
    payment_services.charge_order(order_id=order.id, event_id=envelope["event_id"], source="test", gateway=DECLINE)
    policy = default_policy(max_redrives=1)
    publish_all()
    age(seconds=46)
    assert reconcile(policy).orders == {services.REDRIVEN: 1}
    publish_all()
    age(seconds=policy.wait_after(redrives=1))

    assert reconcile(policy).orders == {services.GAVE_UP_NOTIFICATIONS: 1}

    failed = Notification.objects.filter(order=order, status=NotificationStatus.FAILED)
    assert {n.source_event_type for n in failed} == {"ORDER_CREATED", "ORDER_PROCESSING", "PAYMENT_FAILED"}
    assert OutboxEvent.objects.filter(key=str(order.id), event_type="DEAD_LETTER").count() == 3
    order.refresh_from_db()
    assert order.status == OrderStatus.PAYMENT_FAILED  # the outcome stands
    publish_all()
    age(seconds=46)
    reconcile(policy)
    assert not OutboxEvent.objects.filter(key=str(order.id), completed_at__isnull=True).exclude(
        event_type__in=["DEAD_LETTER", "NOTIFICATION_SENT"]
    ).exists()


def test_history_of_complete_events_is_deleted_after_retention_and_what_is_needed_is_kept():
    finished = [settle(new_order()) for _ in range(3)]
    unfinished = new_order()
    order_services.start_processing(
        order_id=unfinished.id, event_id=created_event(unfinished)["event_id"], source="test"
    )
    publish_all()
    age(seconds=46)
    reconcile()  # marks the finished orders' events complete
    kept_timeline = OrderTimelineEntry.objects.count()
    kept_notifications = Notification.objects.count()
    InboxEntry.objects.update(handled_at=timezone.now() - dt.timedelta(days=8))
    OutboxEvent.objects.filter(completed_at__isnull=False).update(completed_at=timezone.now() - dt.timedelta(days=8))

    result = reconcile()

    finished_keys = [str(order.id) for order in finished]
    assert not OutboxEvent.objects.filter(key__in=finished_keys).exists()
    assert result.purged["outbox"] >= 3 * 6
    # The unfinished order's events and their inbox entries stay: the reconciler may still need them.
    unfinished_events = OutboxEvent.objects.filter(key=str(unfinished.id)).values_list("event_id", flat=True)
    assert set(unfinished_events)
    assert InboxEntry.objects.filter(event_id__in=list(unfinished_events)).exists()
    assert not InboxEntry.objects.exclude(event_id__in=list(unfinished_events)).exists()
    assert OrderTimelineEntry.objects.count() == kept_timeline
    assert Notification.objects.count() == kept_notifications
    assert all(order.payments.exists() for order in finished)


def test_purge_works_in_batches_and_stops_after_its_share_of_the_pass():
    for _ in range(3):
        settle(new_order())
    publish_all()
    OutboxEvent.objects.update(completed_at=timezone.now() - dt.timedelta(days=8))
    total = OutboxEvent.objects.count()

    purged = services.purge_history(retention=dt.timedelta(days=7), batch_size=4, max_batches=2, now=timezone.now())

    assert purged["outbox"] == 8
    assert OutboxEvent.objects.count() == total - 8


@pytest.mark.skipif(
    not connection.features.has_select_for_update_skip_locked, reason="several reconcilers share work on PostgreSQL only"
)
@pytest.mark.django_db(transaction=True)
def test_a_second_reconciler_skips_the_order_the_first_one_holds():
    order = new_order()
    publish_all()
    age(seconds=31)
    held, release = threading.Event(), threading.Event()

    def first_reconciler_holds_the_order():
        with transaction.atomic():
            Order.objects.select_for_update().get(pk=order.pk)
            held.set()
            release.wait(10)
        connection.close()

    holder = threading.Thread(target=first_reconciler_holds_the_order)
    holder.start()
    try:
        assert held.wait(10)
        assert services.redrive_stuck_order(order_id=order.pk, policy=POLICY, downstream=NOTHING_KNOWN, now=timezone.now()) == services.SKIPPED
    finally:
        release.set()
        holder.join()
    assert not Redrive.objects.exists()
    assert services.redrive_stuck_order(order_id=order.pk, policy=POLICY, downstream=NOTHING_KNOWN, now=timezone.now()) == services.REDRIVEN
    # The re-drive it committed is seen by the next reconciler, which waits out the backoff.
    assert services.redrive_stuck_order(order_id=order.pk, policy=POLICY, downstream=NOTHING_KNOWN, now=timezone.now()) == services.SKIPPED


def test_an_operator_re_drives_at_once_and_is_told_what_to_do_when_nothing_can_be():
    order = new_order()
    with pytest.raises(services.NothingToRedrive, match="still waits in the outbox for the relay"):
        services.redrive_now(order_id=order.id, requested_by="admin:ops")
    publish_all()

    services.redrive_now(order_id=order.id, requested_by="admin:ops")  # no deadline for an operator

    assert Redrive.objects.get(order=order).reason == RedriveReason.OPERATOR
    assert "by admin:ops" in OrderTimelineEntry.objects.get(order=order, event_type="REDRIVEN").message

    paid = settle(new_order())
    publish_all()
    with pytest.raises(services.NothingToRedrive, match="every handler applied its events"):
        services.redrive_now(order_id=paid.id, requested_by="admin:ops")
    order_services.cancel_order(order_id=order.id, requested_by="ops")
    with pytest.raises(services.NothingToRedrive, match="it is cancelled and final"):
        services.redrive_now(order_id=order.id, requested_by="admin:ops")


def test_gauges_show_unfinished_and_stuck_orders_with_the_oldest_age():
    new_order()
    stuck = new_order()
    Order.objects.filter(pk=stuck.pk).update(updated_at=timezone.now() - dt.timedelta(seconds=100))

    publish_order_gauges(policy=POLICY)

    def sample(name: str, status: str) -> float:
        return REGISTRY.get_sample_value(name, {"status": status})

    assert sample("orders_unfinished", "CREATED") == 2
    assert sample("orders_stuck", "CREATED") == 1
    assert sample("orders_unfinished_oldest_age_seconds", "CREATED") >= 100
    assert sample("orders_unfinished", "PROCESSING") == 0


def test_a_parked_order_keeps_its_events_past_the_retention_so_its_dead_letter_can_still_be_republished():
    # Its dead letter is re-published only as the outbox recorded it, and its inbox entries say
    # which handlers must not apply the event again.
    order = new_order()
    envelope = created_event(order)
    order_services.start_processing(order_id=order.id, event_id=envelope["event_id"], source="test")
    order_services.park_order(order_id=order.id, reason="payment_gave_up", error="t", original_event=envelope, source="test")
    publish_all()
    age(seconds=46)
    reconcile()
    OutboxEvent.objects.filter(completed_at__isnull=False).update(completed_at=timezone.now() - dt.timedelta(days=8))
    InboxEntry.objects.update(handled_at=timezone.now() - dt.timedelta(days=8))
    reconcile()

    kept = set(OutboxEvent.objects.filter(key=str(order.id)).values_list("event_type", flat=True))
    assert kept == {"ORDER_CREATED", "ORDER_PROCESSING"}  # the DEAD_LETTER row, complete, is gone
    assert InboxEntry.objects.filter(event_id=envelope["event_id"]).exists()
    dead_letter = event_services.archive_dead_letter(
        key=str(order.id), headers={"dlq_reason": "payment_gave_up", "dlq_original_event_id": envelope["event_id"]},
        value=json.dumps(envelope).encode(),
    )
    services.republish_dead_letter(dead_letter_id=dead_letter.pk, requested_by="ops")
    order.refresh_from_db()
    assert order.status == OrderStatus.PROCESSING
