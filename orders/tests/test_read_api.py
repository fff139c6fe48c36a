"""GET /orders, /orders/{id}, /orders/{id}/status and /orders/{id}/events."""

from __future__ import annotations

import uuid

import pytest

from events.contract import Event
from events.models import OutboxEvent
from notifications import services as notification_services
from orders import services as order_services
from orders.models import Order, OrderStatus
from payments import services as payment_services
from payments.simulator import SimulatedGateway

pytestmark = pytest.mark.django_db


@pytest.fixture
def create(api_client, seed_order):
    def _create(**overrides):
        response = api_client.post("/orders", {**seed_order, **overrides}, format="json")
        assert response.status_code == 201
        return response.json()["order_id"]

    return _create


def test_detail_has_items_total_and_status(api_client, create):
    order_id = create()

    body = api_client.get(f"/orders/{order_id}").json()

    assert body["id"] == order_id
    assert body["status"] == "CREATED"
    assert body["total_amount"] == "75.97"
    assert body["user_id"] == "customer_123"
    assert [(i["product_id"], i["quantity"], i["price"], i["line_total"]) for i in body["items"]] == [
        ("prod_001", 2, "29.99", "59.98"),
        ("prod_002", 1, "15.99", "15.99"),
    ]


def test_detail_shows_the_payment_attempts_and_the_notifications_sent(api_client, create, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    order_id = create()
    assert api_client.get(f"/orders/{order_id}").json()["payments"] == []
    created = OutboxEvent.objects.get(key=order_id, event_type="ORDER_CREATED").payload
    order_services.start_processing(order_id=order_id, event_id=created["event_id"], source="test")
    payment_services.charge_order(
        order_id=order_id, event_id=created["event_id"], source="test", gateway=SimulatedGateway(success_rate=0.0, timeout_rate=0.0, seed="x")
    )
    notification_services.send_event_notifications(event=Event(created))

    body = api_client.get(f"/orders/{order_id}").json()

    (payment,) = body["payments"]
    assert (payment["attempt"], payment["status"], payment["amount"], payment["currency"]) == (1, "DECLINED", "75.97", "USD")
    assert (payment["decline_reason"], bool(payment["completed_at"])) == ("Card declined", True)
    (notification,) = body["notifications"]
    assert (notification["channel"], notification["event_type"], notification["status"], notification["recipient"]) == (
        "email", "ORDER_CREATED", "SENT", "customer@example.com"
    )


def test_status_and_timeline(api_client, create):
    order_id = create()

    assert api_client.get(f"/orders/{order_id}/status").json()["status"] == "CREATED"
    assert api_client.get(f"/orders/{order_id}/status/").json()["order_id"] == order_id
    timeline = api_client.get(f"/orders/{order_id}/events").json()
    assert [(e["event_type"], e["status"]) for e in timeline] == [("ORDER_CREATED", "CREATED")]


@pytest.mark.parametrize("suffix", ["", "/status", "/events"])
def test_unknown_order_is_404(api_client, suffix):
    response = api_client.get(f"/orders/{uuid.uuid4()}{suffix}")

    assert response.status_code == 404
    assert response.json() == {"error": "Order not found"}


def test_list_is_newest_first_and_filters_by_user_and_status(api_client, create):
    first = create(user_id="alice")
    second = create(user_id="bob")
    third = create(user_id="alice")
    Order.objects.filter(pk=second).update(status=OrderStatus.PAID)

    everything = api_client.get("/orders").json()
    assert everything["count"] == 3
    assert [o["id"] for o in everything["results"]] == [third, second, first]
    assert [o["id"] for o in api_client.get("/orders?user_id=alice").json()["results"]] == [third, first]
    assert [o["id"] for o in api_client.get("/orders?status=PAID").json()["results"]] == [second]
    assert api_client.get("/orders?status=CREATED&user_id=bob").json()["count"] == 0


def test_list_is_paginated(api_client, create):
    created = [create() for _ in range(3)]

    first_page = api_client.get("/orders", {"page_size": 2}).json()
    second_page = api_client.get(first_page["next"]).json()

    assert first_page["count"] == 3
    assert len(first_page["results"]) == 2
    assert second_page["next"] is None
    assert {o["id"] for o in first_page["results"] + second_page["results"]} == set(created)


def test_list_refuses_unknown_status(api_client):
    response = api_client.get("/orders?status=SHIPPED")

    assert response.status_code == 400
    assert "status" in response.json()["fields"]


def test_list_does_not_query_per_order(api_client, create, django_assert_max_num_queries):
    for _ in range(5):
        create()
    with django_assert_max_num_queries(3):
        assert api_client.get("/orders").json()["count"] == 5


@pytest.mark.parametrize("page", ["", "abc", "-1"])
def test_a_page_that_is_not_a_number_is_refused(api_client, page):
    response = api_client.get(f"/orders?page={page}")

    assert response.status_code == 400
    assert "page" in response.json()["fields"]


def test_the_timeline_tells_clients_what_happened_but_not_the_internals(api_client, create):
    order_id = create()
    created = OutboxEvent.objects.get(key=order_id, event_type="ORDER_CREATED").payload
    order_services.start_processing(order_id=order_id, event_id=created["event_id"], source="test")
    error = 'OperationalError: connection to server at "db.internal" (10.0.0.3) failed for user "orders"'
    order_services.park_order(order_id=order_id, reason="payment_gave_up", error=error, original_event=created, source="test")
    payment_services.cancel_order(order_id=order_id, requested_by="admin:jane", reason="customer called", source="operator")

    response = api_client.get(f"/orders/{order_id}/events")

    assert [(entry["event_type"], entry["message"]) for entry in response.json()] == [
        ("ORDER_CREATED", "Order created"),
        ("ORDER_PROCESSING", "Order accepted for processing"),
        ("FAILED", "On hold: payment gateway unavailable"),
        ("ORDER_CANCELLED", "Order cancelled"),
    ]
    for internal in ("db.internal", "OperationalError", "admin:jane", "customer called"):
        assert internal not in response.content.decode()
    # Operators still read the whole story (the admin shows the stored messages).
    assert Order.objects.get(pk=order_id).timeline.filter(message__contains="db.internal").exists()
