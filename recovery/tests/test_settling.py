"""Settling events against the real database: complete events are marked, an event a handler missed
is re-driven, and a notification still missing after the last re-drive is recorded failed."""

from __future__ import annotations

import pytest

from events.contract import Event
from events.models import OutboxEvent
from notifications import services as notification_services
from notifications.models import Notification, NotificationStatus
from orders import services as order_services
from orders.models import Order, OrderStatus
from payments import services as payment_services
from recovery.models import Redrive, RedriveReason
from recovery.redrives import RedriveOutcome
from recovery.selectors import Downstream
from recovery.tests.support import (
    APPROVE,
    DECLINE,
    ONE_REDRIVE,
    age,
    created_event,
    new_order,
    publish_all,
    reconcile,
    re_drive_up_to_the_limit,
    settle,
)

pytestmark = pytest.mark.django_db


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

    assert result.orders == {RedriveOutcome.REDRIVEN: 1}
    assert Redrive.objects.get(order=missing).event_id == paid_event.event_id
    assert Redrive.objects.get(order=missing).reason == RedriveReason.EVENT_NOT_HANDLED
    assert not OutboxEvent.objects.filter(key=str(done.id), completed_at__isnull=True).exists()
    assert OutboxEvent.objects.filter(event_id=paid_event.event_id, completed_at__isnull=True).exists()

    notification_services.send_event_notifications(event=Event(paid_event.payload))
    publish_all()
    assert reconcile().events_completed == 2  # the event and its re-driven copy
    assert not OutboxEvent.objects.filter(completed_at__isnull=True).exclude(event_type="NOTIFICATION_SENT").exists()


def refund_not_made() -> tuple[Order, OutboxEvent]:
    """A paid order, the customer told of it all, and a refund asked for whose REFUND_REQUESTED
    never reached the refund step."""
    order = settle(new_order())
    payment_services.request_refund(order_id=order.id, requested_by="client 1", source="test")
    return order, OutboxEvent.objects.get(key=str(order.id), event_type="REFUND_REQUESTED")


@pytest.mark.parametrize("unhandled", [paid_without_its_last_notification, refund_not_made])
def test_an_event_still_ahead_of_the_bridge_is_not_re_driven(unhandled):
    order, event = unhandled()
    publish_all(partition=2, offset=7)
    age(seconds=46)

    assert reconcile(downstream=Downstream(bridge_offsets={("payments", 2): 7})).orders == {RedriveOutcome.SKIPPED: 1}
    assert not Redrive.objects.filter(order=order).exists()
    assert reconcile(downstream=Downstream(bridge_offsets={("payments", 2): 8})).orders == {RedriveOutcome.REDRIVEN: 1}
    assert Redrive.objects.get(order=order).event_id == event.event_id


def test_a_notification_missing_after_the_last_re_drive_is_recorded_failed_with_a_dead_letter():
    order = new_order()
    envelope = created_event(order)
    order_services.start_processing(order_id=order.id, event_id=envelope["event_id"], source="test")
    payment_services.charge_order(order_id=order.id, event_id=envelope["event_id"], source="test", gateway=DECLINE)
    policy = ONE_REDRIVE
    re_drive_up_to_the_limit()

    assert reconcile(policy).orders == {RedriveOutcome.GIVEN_UP: 1}

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
