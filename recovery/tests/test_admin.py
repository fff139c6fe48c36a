"""The admin's Unfinished orders page: stuck orders, how long, and "Re-drive now"."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.utils import timezone

from devtools.harness.sample_orders import create_test_order
from events.models import OutboxEvent
from orders import services as order_services
from orders.models import Order
from payments import services as payment_services
from payments.gateway import GatewayTimeout
from payments.models import Payment, Refund
from payments.simulator import SimulatedGateway
from recovery.models import Redrive, RedriveReason

pytestmark = pytest.mark.django_db


def new_order(name: str) -> Order:
    return create_test_order(user_id=name, email=f"{name}@example.com", correlation_id=f"corr-{name}")


def created_event_id(order: Order):
    return OutboxEvent.objects.get(key=str(order.id), event_type="ORDER_CREATED").event_id


def test_unfinished_orders_lists_only_orders_not_yet_terminal_oldest_change_first(staff_client):
    recent, stuck, cancelled = new_order("recent"), new_order("stuck"), new_order("cancelled")
    Order.objects.filter(pk=stuck.pk).update(updated_at=timezone.now() - dt.timedelta(seconds=300))
    payment_services.cancel_order(order_id=cancelled.id, requested_by="ops", source="operator")

    page = staff_client.get("/admin/recovery/unfinishedorder/").content.decode()

    assert str(stuck.id) in page and str(recent.id) in page
    assert str(cancelled.id) not in page
    assert page.index(str(stuck.id)) < page.index(str(recent.id))
    assert re.search(r">30\d s<", page)  # how long the stuck one has been in its status


def test_re_drive_now_sends_the_awaited_event_again_and_records_it(staff_client):
    order = new_order("ops")
    OutboxEvent.objects.update(published_at=timezone.now())

    response = staff_client.post(
        "/admin/recovery/unfinishedorder/",
        {"action": "redrive_now", "_selected_action": [str(order.pk)]},
        follow=True,
    )

    page = response.content.decode()
    assert "Re-driven: 1" in page
    redrive = Redrive.objects.get(order=order)
    assert (redrive.reason, redrive.requested_by, redrive.event_type) == (RedriveReason.OPERATOR, "admin:operator", "ORDER_CREATED")
    assert OutboxEvent.objects.filter(event_id=redrive.event_id, published_at__isnull=True).count() == 1
    assert order.timeline.filter(event_type="REDRIVEN", message__contains="by admin:operator").exists()


def test_a_refused_re_drive_says_what_to_do_instead(staff_client):
    order = new_order("waiting")  # its ORDER_CREATED is not published yet

    response = staff_client.post(
        "/admin/recovery/unfinishedorder/",
        {"action": "redrive_now", "_selected_action": [str(order.pk)]},
        follow=True,
    )

    assert "still waits in the outbox for the relay: check that the relay runs and Kafka is reachable" in response.content.decode()
    assert not Redrive.objects.exists()


def test_orders_being_cancelled_say_what_they_await(staff_client):
    charging, refund_failed = new_order("charging"), new_order("refund-failed")
    no_answer = SimulatedGateway(success_rate=1.0, timeout_rate=1.0, seed="admin")
    gateway = SimulatedGateway(success_rate=1.0, timeout_rate=0.0, refund_timeout_rate=0.0, refund_failure_rate=0.0, seed="admin")
    for order in (charging, refund_failed):
        order_services.start_processing(order_id=order.id, event_id=created_event_id(order), source="test")
    # The first one's charge gets no answer (it stays under way); the second one is paid.
    with pytest.raises(GatewayTimeout):
        payment_services.charge_order(order_id=charging.id, event_id=created_event_id(charging), source="test", gateway=no_answer)
    payment_services.charge_order(order_id=refund_failed.id, event_id=created_event_id(refund_failed), source="test", gateway=gateway)
    for order in (charging, refund_failed):
        payment_services.cancel_order(order_id=order.id, requested_by="ops", source="operator")
    # The gateway refuses the paid one's refund: it knows no charge of that reference.
    Payment.objects.filter(order=refund_failed).update(gateway_reference="sim_unknown")
    refund = Refund.objects.get(order=refund_failed)
    requested = OutboxEvent.objects.get(key=str(refund_failed.id), event_type="REFUND_REQUESTED")
    payment_services.refund_payment(order_id=refund_failed.id, event_id=requested.event_id, refund_id=refund.id, source="test", gateway=gateway)

    page = staff_client.get("/admin/recovery/unfinishedorder/?status__exact=CANCELLING").content.decode()

    assert re.search(rf"{charging.id}.*?CANCELLING.*?its charge<", page, re.S)
    assert re.search(rf"{refund_failed.id}.*?CANCELLING.*?an operator: retry its failed refund<", page, re.S)
