"""The admin's Unfinished orders page: stuck orders, how long, and "Re-drive now"."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.utils import timezone

from devtools.harness.sample_orders import create_test_order
from events.models import OutboxEvent
from orders import services as order_services
from payments import services as payment_services
from orders.models import Order
from recovery.models import Redrive, RedriveReason

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, django_user_model):
    user = django_user_model.objects.create_user("operator", password="pw", is_staff=True, is_superuser=True)
    client.force_login(user)
    return client


def new_order(name: str) -> Order:
    return create_test_order(user_id=name, email=f"{name}@example.com", correlation_id=f"corr-{name}")


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
