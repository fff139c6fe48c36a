"""End to end: a cancel and a refund asked over HTTP go through the real pipeline (outbox relay,
Kafka-protocol broker, bridge, Celery worker, the simulated gateway's ledger) and the money adds up."""

from __future__ import annotations

import json
import urllib.request
from decimal import Decimal

import pytest

from devtools.harness.audit import money_audit, wait_for_completion
from devtools.harness.sample_orders import post_json, post_order
from devtools.harness.waiting import wait_until
from events.contract import ORDER_CANCELLED, ORDER_REFUNDED
from notifications.models import Notification
from orders.models import Order, OrderStatus
from orders_project.tests.test_pipeline import expected_status, system  # noqa: F401 (the fixture)
from payments.models import Payment, Refund, RefundStatus, SimulatedRefund

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


def paid_orders(base_url: str, count: int) -> list[str]:
    """``count`` orders posted and paid (the seeded gateway approves their first charge)."""
    order_ids = []
    while len([order_id for order_id in order_ids if expected_status(order_id) == OrderStatus.PAID]) < count:
        order_ids.append(post_order(base_url, user_id=f"refunding_{len(order_ids)}"))
    wait_for_completion(order_ids)
    return [order_id for order_id in order_ids if expected_status(order_id) == OrderStatus.PAID][:count]


def settled(order_id: str, status: str) -> bool:
    """The order reached ``status``, with no refund in flight and the customer told of it."""
    order = Order.objects.get(pk=order_id)
    told = Notification.objects.filter(order_id=order_id, status="SENT", source_event_type__in=(ORDER_CANCELLED, ORDER_REFUNDED))
    return (
        order.status == status
        and not order.refunds.filter(status=RefundStatus.REQUESTED).exists()
        and told.filter(source_event_type=ORDER_CANCELLED if status == OrderStatus.CANCELLED else ORDER_REFUNDED).exists()
    )


def test_a_paid_order_cancelled_and_another_half_refunded_through_the_pipeline(system):  # noqa: F811
    cancelled, refunded = paid_orders(system.base_url, 2)
    charge = Payment.objects.get(order_id=refunded, status="APPROVED").amount
    half = (charge / 2).quantize(Decimal("0.01"))

    status, answer = post_json(f"{system.base_url}/orders/{cancelled}/cancel", {"reason": "changed my mind"})
    assert (status, answer["status"]) == (202, OrderStatus.CANCELLING), answer
    status, answer = post_json(f"{system.base_url}/orders/{refunded}/refunds", {"amount": str(half), "reason": "one broke"})
    assert (status, answer["status"], Decimal(answer["amount"])) == (202, RefundStatus.REQUESTED, half), answer

    wait_until(lambda: settled(cancelled, OrderStatus.CANCELLED), timeout=60, interval=0.2, message="not cancelled")
    wait_until(lambda: settled(refunded, OrderStatus.PARTIALLY_REFUNDED), timeout=60, interval=0.2, message="not refunded")

    # The cancelled order's charge came back in full, as one refund, in the gateway's ledger too.
    order = Order.objects.get(pk=cancelled)
    steps = [event_type for event_type in order.timeline.values_list("event_type", flat=True) if event_type != "NOTIFICATION_SENT"]
    assert steps[2:] == ["ORDER_PAID", "CANCELLATION_REQUESTED", "REFUND_REQUESTED", ORDER_REFUNDED, ORDER_CANCELLED]
    (refund,) = Refund.objects.filter(order_id=cancelled)
    payment = Payment.objects.get(order_id=cancelled, status="APPROVED")
    assert (refund.status, refund.amount, payment.refunded_amount) == (RefundStatus.SUCCEEDED, payment.amount, payment.amount)
    assert SimulatedRefund.objects.get(idempotency_key=refund.idempotency_key).approved

    # The other shows its refund, and keeps the rest.
    with urllib.request.urlopen(f"{system.base_url}/orders/{refunded}", timeout=10) as response:
        shown = json.load(response)
    # str(): refunded_amount comes as a JSON number, unlike the other amounts (strings).
    assert (shown["status"], Decimal(str(shown["refunded_amount"]))) == (OrderStatus.PARTIALLY_REFUNDED, half)
    (listed,) = shown["refunds"]
    assert (listed["status"], Decimal(listed["amount"]), listed["reason"]) == (RefundStatus.SUCCEEDED, half, "one broke")
    assert listed["gateway_reference"].startswith("simr_")

    assert money_audit([cancelled, refunded]) == []
