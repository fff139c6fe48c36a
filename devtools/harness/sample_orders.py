"""Orders the tests make: the seed's example request body, orders written through the service as
the API writes them, and orders posted to a running web.

The service is imported when an order is written, not with this module: the benchmark reads
``SEED_ORDER`` before it sets Django up."""

from __future__ import annotations

import copy
import json
import urllib.error
import urllib.request
from decimal import Decimal

# The request body of the seed's curl example (README walkthrough): 2 items, total 75.97.
SEED_ORDER = {
    "user_id": "customer_123",
    "email": "customer@example.com",
    "items": [
        {"product_id": "prod_001", "product_name": "Premium Widget", "quantity": 2, "price": 29.99},
        {"product_id": "prod_002", "product_name": "Standard Widget", "quantity": 1, "price": 15.99},
    ],
}


def create_test_order(
    *, user_id: str, email: str, quantity: int = 1, price: str = "1.00", correlation_id: str, product_name: str = "W"
):
    """An order of one line, written through the service as the API writes it."""
    from orders.services import create_order

    item = {"product_id": "p", "product_name": product_name, "quantity": quantity, "price": Decimal(price)}
    return create_order(user_id=user_id, email=email, items=[item], correlation_id=correlation_id).order


def process_test_order(order_id):
    """The pipeline's first step on the order (CREATED -> PROCESSING); its ORDER_CREATED event's id."""
    from events.models import OutboxEvent
    from orders.services import start_processing

    event_id = OutboxEvent.objects.get(key=str(order_id), event_type="ORDER_CREATED").event_id
    start_processing(order_id=order_id, event_id=event_id, source="test")
    return event_id


def pay_test_order(order_id, *, gateway) -> None:
    """The pipeline's steps on the order up to its charge by ``gateway``: processed, then charged."""
    from payments.services import charge_order

    charge_order(order_id=order_id, event_id=process_test_order(order_id), source="test", gateway=gateway)


def give_refunds(order_id, *, gateway) -> None:
    """The pipeline's refund step for every REFUND_REQUESTED event of the order, as its task runs
    it (a step already applied does nothing again)."""
    from events.models import OutboxEvent
    from payments.services import refund_payment

    for event in OutboxEvent.objects.filter(key=str(order_id), event_type="REFUND_REQUESTED").order_by("id"):
        refund_id = event.payload["details"]["refund"]["id"]
        refund_payment(order_id=order_id, event_id=event.event_id, refund_id=refund_id, source="test", gateway=gateway)


def create_test_orders(count: int, *, prefix: str, price: str = "1.00") -> list[str]:
    """``count`` such orders; their ids."""
    return [
        str(
            create_test_order(
                user_id=f"{prefix}_{index}", email=f"{prefix}@example.com", price=price, correlation_id=f"{prefix}-{index}"
            ).id
        )
        for index in range(count)
    ]


def post_json(url: str, body: dict, *, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """POST ``body`` as JSON to ``url``: the answer's status and JSON body, errors (4xx) included."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **(headers or {})}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def post_order(base_url: str, *, user_id: str, correlation_id: str | None = None) -> str:
    """POST the seed's order, for ``user_id``, to web at ``base_url``; the new order's id."""
    body = {**copy.deepcopy(SEED_ORDER), "user_id": user_id, "email": f"{user_id}@example.com"}
    status, answer = post_json(f"{base_url}/orders", body, headers={"X-Correlation-ID": correlation_id} if correlation_id else None)
    assert status == 201, answer
    return answer["order_id"]
