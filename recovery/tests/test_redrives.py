"""Re-drives against the real database: what the reconciler re-drives, when, how often, and what it
parks; and the operator's re-drive now."""

from __future__ import annotations

import datetime as dt

import threading

import pytest
from django.db import connection, transaction
from django.utils import timezone

from events.contract import Event
from events.models import OutboxEvent
from notifications import services as notification_services
from notifications.models import Notification
from orders import services as order_services
from orders.models import Order, OrderStatus, OrderTimelineEntry
from payments import services as payment_services
from recovery.models import Redrive, RedriveReason
from recovery.redrives import REDRIVEN_ENTRY, NothingToRedrive, RedriveOutcome, redrive_now, redrive_stuck_order
from recovery.selectors import EMPTY_QUEUE_GRACE, Downstream
from recovery.tests.support import (
    APPROVE,
    DECLINE,
    NOTHING_DOWNSTREAM,
    POLICY,
    age,
    copies,
    created_event,
    new_order,
    publish_all,
    reconcile,
    settle,
)

pytestmark = pytest.mark.django_db


def test_an_order_stuck_in_created_gets_its_event_again_under_its_own_id():
    order = new_order()
    event_id = created_event(order)["event_id"]
    publish_all()
    age(seconds=29)
    assert not reconcile().orders  # not past its deadline yet

    age(seconds=2)
    result = reconcile()

    assert result.orders == {RedriveOutcome.REDRIVEN: 1}
    assert copies(event_id) == 2
    assert OutboxEvent.objects.filter(event_id=event_id, published_at__isnull=True).count() == 1
    redrive = Redrive.objects.get(order=order)
    assert (str(redrive.event_id), redrive.reason, redrive.requested_by) == (event_id, RedriveReason.STUCK_CREATED, "reconciler")
    entry = OrderTimelineEntry.objects.get(order=order, event_type=REDRIVEN_ENTRY)
    assert str(entry.event_id) == event_id
    assert "re-drive 1 of 3" in entry.message
    order.refresh_from_db()
    assert order.status == OrderStatus.CREATED  # re-driving changes no status


def test_an_event_still_waiting_in_the_outbox_is_the_relays_work_not_lost_work():
    order = new_order()
    age(seconds=600)
    assert reconcile().orders == {RedriveOutcome.SKIPPED: 1}
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
    assert not reconcile(downstream=Downstream(bridge_offsets={("orders", 1): 41})).orders[RedriveOutcome.REDRIVEN]
    assert copies(event_id) == 1
    # Another partition's progress says nothing about this one.
    assert reconcile(downstream=Downstream(bridge_offsets={("orders", 0): 500})).orders == {RedriveOutcome.REDRIVEN: 1}
    assert copies(event_id) == 2


def test_an_event_the_bridge_read_past_is_re_driven_unless_the_celery_queue_holds_a_backlog():
    event_id = stuck_with_its_event_at(partition=1, offset=41)
    passed = {("orders", 1): 42}
    assert not reconcile(downstream=Downstream(bridge_offsets=passed, queued_tasks=350)).orders[RedriveOutcome.REDRIVEN]
    assert reconcile(downstream=Downstream(bridge_offsets=passed, queued_tasks=0)).orders == {RedriveOutcome.REDRIVEN: 1}
    assert copies(event_id) == 2


def test_a_queue_that_just_emptied_leaves_its_last_tasks_to_the_workers_that_took_them():
    event_id = stuck_with_its_event_at(partition=1, offset=41)
    passed = {("orders", 1): 42}
    just_drained = Downstream(bridge_offsets=passed, queued_tasks=0, queue_empty_for=EMPTY_QUEUE_GRACE - 1)
    assert not reconcile(downstream=just_drained).orders[RedriveOutcome.REDRIVEN]
    drained = Downstream(bridge_offsets=passed, queued_tasks=0, queue_empty_for=EMPTY_QUEUE_GRACE)
    assert reconcile(downstream=drained).orders == {RedriveOutcome.REDRIVEN: 1}
    assert copies(event_id) == 2


def test_a_backlog_that_moves_is_waited_for_long_past_the_deadlines():
    event_id = stuck_with_its_event_at(partition=1, offset=41)
    moving = Downstream(bridge_offsets={("orders", 1): 42}, queued_tasks=350, stalled_for=5.0)
    age(seconds=POLICY.max_wait_in_flight - 61)
    assert not reconcile(downstream=moving).orders[RedriveOutcome.REDRIVEN]
    assert copies(event_id) == 1


def test_past_the_last_resort_an_event_in_flight_is_re_driven_however_its_backlog_moves():
    event_id = stuck_with_its_event_at(partition=1, offset=41)
    ahead = Downstream(bridge_offsets={("orders", 1): 41}, queued_tasks=350, stalled_for=5.0)
    age(seconds=POLICY.max_wait_in_flight - 59)
    assert reconcile(downstream=ahead).orders == {RedriveOutcome.REDRIVEN: 1}
    assert copies(event_id) == 2


@pytest.mark.parametrize("offsets", [{("orders", 1): 41}, {("orders", 1): 42}, None], ids=["ahead", "queued", "kafka away"])
def test_a_backlog_that_stays_still_is_evidence_of_loss(offsets):
    event_id = stuck_with_its_event_at(partition=1, offset=41)
    still = Downstream(bridge_offsets=offsets, queued_tasks=350, stalled_for=POLICY.stalled_after - 1)
    assert not reconcile(downstream=still).orders[RedriveOutcome.REDRIVEN]
    still = Downstream(bridge_offsets=offsets, queued_tasks=350, stalled_for=POLICY.stalled_after)
    assert reconcile(downstream=still).orders == {RedriveOutcome.REDRIVEN: 1}
    assert copies(event_id) == 2


def test_an_event_handed_to_a_celery_broker_that_restarted_since_is_re_driven_despite_a_backlog():
    event_id = stuck_with_its_event_at(partition=1, offset=41)
    published_at = OutboxEvent.objects.get(event_id=event_id).published_at
    passed = {("orders", 1): 42}
    before = Downstream(bridge_offsets=passed, queued_tasks=350, broker_started_at=published_at - dt.timedelta(seconds=1))
    assert not reconcile(downstream=before).orders[RedriveOutcome.REDRIVEN]
    since = Downstream(bridge_offsets=passed, queued_tasks=350, broker_started_at=published_at + dt.timedelta(seconds=1))
    assert reconcile(downstream=since).orders == {RedriveOutcome.REDRIVEN: 1}
    assert copies(event_id) == 2


@pytest.mark.parametrize("downstream", [
    Downstream(bridge_offsets=None, queued_tasks=0),
    Downstream(bridge_offsets={("orders", 1): 42}, queued_tasks=None),
], ids=["kafka away", "celery broker away"])
def test_while_kafka_or_the_celery_broker_does_not_answer_nothing_published_is_re_driven(downstream):
    event_id = stuck_with_its_event_at(partition=1, offset=41)
    assert not reconcile(downstream=downstream).orders[RedriveOutcome.REDRIVEN]
    assert copies(event_id) == 1


def test_re_drives_back_off_then_the_order_is_parked_with_a_dead_letter():
    order = new_order()
    event_id = created_event(order)["event_id"]
    publish_all()
    age(seconds=31)
    waits = []
    for redrive in range(1, 4):
        assert reconcile().orders == {RedriveOutcome.REDRIVEN: 1}
        publish_all()
        assert not reconcile().orders  # waiting out its backoff
        wait = POLICY.wait_after(redrives=redrive)
        waits.append(wait)
        age(seconds=wait - 1)
        assert not reconcile().orders
        age(seconds=1)
    assert waits == [15.0, 30.0, 60.0]

    assert reconcile().orders == {RedriveOutcome.PARKED: 1}

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

    assert reconcile().orders == {RedriveOutcome.REDRIVEN: 1}
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
        assert redrive_stuck_order(order_id=order.pk, policy=POLICY, downstream=NOTHING_DOWNSTREAM, now=timezone.now()) == RedriveOutcome.SKIPPED
    finally:
        release.set()
        holder.join()
    assert not Redrive.objects.exists()
    assert redrive_stuck_order(order_id=order.pk, policy=POLICY, downstream=NOTHING_DOWNSTREAM, now=timezone.now()) == RedriveOutcome.REDRIVEN
    # The re-drive it committed is seen by the next reconciler, which waits out the backoff.
    assert redrive_stuck_order(order_id=order.pk, policy=POLICY, downstream=NOTHING_DOWNSTREAM, now=timezone.now()) == RedriveOutcome.SKIPPED


def test_an_operator_re_drives_at_once_and_is_told_what_to_do_when_nothing_can_be():
    order = new_order()
    with pytest.raises(NothingToRedrive, match="still waits in the outbox for the relay"):
        redrive_now(order_id=order.id, requested_by="admin:ops")
    publish_all()

    redrive_now(order_id=order.id, requested_by="admin:ops")  # no deadline for an operator

    assert Redrive.objects.get(order=order).reason == RedriveReason.OPERATOR
    assert "by admin:ops" in OrderTimelineEntry.objects.get(order=order, event_type="REDRIVEN").message

    paid = settle(new_order())
    publish_all()
    with pytest.raises(NothingToRedrive, match="every handler applied its events"):
        redrive_now(order_id=paid.id, requested_by="admin:ops")
    parked = new_order()
    order_services.park_order(order_id=parked.id, reason="r", error="e", original_event={}, source="test")
    with pytest.raises(NothingToRedrive, match="re-publish its event from Dead letters"):
        redrive_now(order_id=parked.id, requested_by="admin:ops")


# What a pass costs with nothing to re-drive: one query per job, and the events' scan.
QUERIES_OF_AN_IDLE_PASS = 12


def test_a_pass_during_a_draining_backlog_does_not_look_at_its_orders_one_by_one(django_assert_max_num_queries):
    for _ in range(20):
        new_order()
    publish_all(partition=1, offset=41)
    age(seconds=120)
    draining = Downstream(bridge_offsets={("orders", 1): 42}, queued_tasks=350, stalled_for=5.0)
    with django_assert_max_num_queries(QUERIES_OF_AN_IDLE_PASS):
        assert reconcile(downstream=draining).orders == {}
    assert reconcile(downstream=Downstream(bridge_offsets={("orders", 1): 42}, queued_tasks=0)).orders == {
        RedriveOutcome.REDRIVEN: 20
    }
