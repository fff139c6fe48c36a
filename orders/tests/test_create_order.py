"""POST /orders: the seed's contract, the outbox row, atomicity and correlation ids."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from django.db import DatabaseError

from events.models import OutboxEvent
from orders import services
from orders.models import Order, OrderItem, OrderTimelineEntry

pytestmark = pytest.mark.django_db


def test_seed_example_gives_seed_response_and_total(api_client, seed_order):
    response = api_client.post("/orders", seed_order, format="json")

    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"message", "order_id", "status"}
    assert body["message"] == "Order created successfully"
    assert body["status"] == "CREATED"
    order = Order.objects.get(pk=uuid.UUID(body["order_id"]))
    assert order.total_amount == Decimal("75.97")
    assert response["Location"] == f"/orders/{order.id}"
    assert list(order.items.values_list("product_id", "quantity", "price")) == [
        ("prod_001", 2, Decimal("29.99")),
        ("prod_002", 1, Decimal("15.99")),
    ]


def test_trailing_slash_is_optional(api_client, seed_order):
    assert api_client.post("/orders/", seed_order, format="json").status_code == 201
    assert api_client.post("/orders", seed_order, format="json").status_code == 201
    assert Order.objects.count() == 2


def test_create_writes_timeline_and_outbox_event_with_contract_envelope(api_client, seed_order):
    response = api_client.post("/orders", seed_order, format="json", HTTP_X_CORRELATION_ID="corr-123")
    order_id = response.json()["order_id"]

    entry = OrderTimelineEntry.objects.get(order_id=order_id)
    assert (entry.event_type, entry.status) == ("ORDER_CREATED", "CREATED")
    event = OutboxEvent.objects.get()
    assert event.event_id == entry.event_id
    assert (event.event_type, event.topic, event.key, event.published_at) == ("ORDER_CREATED", "orders", order_id, None)
    assert event.headers == {"event_type": "ORDER_CREATED", "event_id": str(event.event_id), "correlation_id": "corr-123"}
    envelope = event.payload
    assert envelope["event_id"] == str(event.event_id)
    assert envelope["type"] == "ORDER_CREATED"
    assert envelope["metadata"] == {"correlation_id": "corr-123", "source": "order-api", "attempt": 1}
    assert envelope["timestamp"].endswith("Z")
    assert envelope["order"]["id"] == order_id
    assert envelope["order"]["total_amount"] == "75.97"
    assert envelope["order"]["status"] == "CREATED"
    assert envelope["order"]["items"][0] == {
        "product_id": "prod_001",
        "product_name": "Premium Widget",
        "quantity": 2,
        "price": "29.99",
    }
    assert set(envelope["order"]["timestamps"]) == {"created_at", "updated_at"}


def test_correlation_id_is_returned_generated_and_logged(api_client, seed_order, caplog):
    given = api_client.post("/orders", seed_order, format="json", HTTP_X_CORRELATION_ID="client-abc")
    assert given["X-Correlation-ID"] == "client-abc"

    generated = api_client.post("/orders", seed_order, format="json")
    assert uuid.UUID(generated["X-Correlation-ID"])

    hostile = api_client.post("/orders", seed_order, format="json", HTTP_X_CORRELATION_ID="bad id\n{}")
    assert uuid.UUID(hostile["X-Correlation-ID"])

    created_logs = [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == "order_created"]
    assert created_logs[0]["correlation_id"] == "client-abc"
    assert created_logs[0]["order_id"] == given.json()["order_id"]
    assert Order.objects.get(pk=given.json()["order_id"]).correlation_id == "client-abc"


def _fail(*args, **kwargs):
    raise DatabaseError("injected failure")


@pytest.mark.parametrize(
    ("target", "attribute"),
    [
        (OrderItem.objects, "bulk_create"),
        (services, "enqueue_event"),
        (OrderTimelineEntry.objects, "create"),
    ],
    ids=["items", "outbox", "timeline"],
)
def test_failure_inside_the_transaction_writes_nothing(api_client, seed_order, monkeypatch, target, attribute):
    monkeypatch.setattr(target, attribute, _fail)
    api_client.raise_request_exception = False

    response = api_client.post("/orders", seed_order, format="json")

    assert response.status_code == 500
    assert Order.objects.count() == 0
    assert OrderItem.objects.count() == 0
    assert OrderTimelineEntry.objects.count() == 0
    assert OutboxEvent.objects.count() == 0
