"""Charging: the simulated gateway, at-most-once charges, retries after timeouts."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

import pytest

from devtools.harness.sample_orders import create_test_order
from events.models import OutboxEvent
from orders import services as order_services
from payments import services
from payments.gateway import GatewayTimeout, SimulatedGateway
from payments.models import Payment, SimulatedCharge

pytestmark = pytest.mark.django_db
SOURCE = "test"


@pytest.fixture
def processing_order():
    order = create_test_order(user_id="pay", email="pay@example.com", quantity=3, price="10.01", correlation_id="corr-pay")
    event_id = OutboxEvent.objects.get(key=str(order.id)).event_id
    order_services.start_processing(order_id=order.id, event_id=event_id, source=SOURCE)
    order.refresh_from_db()
    order.created_event_id = event_id
    return order


def test_simulated_gateway_approves_the_configured_share_reproducibly():
    gateway = SimulatedGateway(success_rate=0.85, timeout_rate=0.0, seed="s1")
    outcomes = [gateway.would_approve(idempotency_key=f"k{index}") for index in range(4000)]

    assert 0.82 < sum(outcomes) / len(outcomes) < 0.88
    again = SimulatedGateway(success_rate=0.85, timeout_rate=0.0, seed="s1")
    assert outcomes == [again.would_approve(idempotency_key=f"k{index}") for index in range(4000)]
    other_seed = SimulatedGateway(success_rate=0.85, timeout_rate=0.0, seed="s2")
    assert outcomes != [other_seed.would_approve(idempotency_key=f"k{index}") for index in range(4000)]


@pytest.mark.parametrize("rate, status, order_status", [(1.0, "APPROVED", "PAID"), (0.0, "DECLINED", "PAYMENT_FAILED")])
def test_charge_records_payment_and_order_outcome(processing_order, rate, status, order_status):
    gateway = SimulatedGateway(success_rate=rate, timeout_rate=0.0, seed="x")

    payment = services.charge_order(order_id=processing_order.id, event_id=processing_order.created_event_id, source=SOURCE, gateway=gateway)

    processing_order.refresh_from_db()
    assert (payment.status, payment.amount, payment.attempt) == (status, Decimal("30.03"), 1)
    assert processing_order.status == order_status
    charge = SimulatedCharge.objects.get()
    assert (charge.idempotency_key, charge.amount, charge.approved) == (payment.idempotency_key, Decimal("30.03"), rate == 1.0)


def test_charging_the_same_event_twice_charges_once(processing_order):
    gateway = SimulatedGateway(success_rate=1.0, timeout_rate=0.0, seed="x")
    for _ in range(3):
        services.charge_order(order_id=processing_order.id, event_id=processing_order.created_event_id, source=SOURCE, gateway=gateway)

    assert Payment.objects.filter(order=processing_order).count() == 1
    assert SimulatedCharge.objects.count() == 1
    assert OutboxEvent.objects.filter(key=str(processing_order.id), event_type="ORDER_PAID").count() == 1


def test_a_timeout_is_retried_under_the_same_key_without_a_second_charge(processing_order):
    flaky = SimulatedGateway(success_rate=1.0, timeout_rate=1.0, seed="x")
    with pytest.raises(GatewayTimeout):
        services.charge_order(order_id=processing_order.id, event_id=processing_order.created_event_id, source=SOURCE, gateway=flaky)
    pending = Payment.objects.get(order=processing_order)
    assert pending.status == "PENDING"

    healthy = SimulatedGateway(success_rate=1.0, timeout_rate=0.0, seed="x")
    payment = services.charge_order(order_id=processing_order.id, event_id=processing_order.created_event_id, source=SOURCE, gateway=healthy)

    assert payment.pk == pending.pk
    assert (payment.status, Payment.objects.get(pk=payment.pk).gateway_calls) == ("APPROVED", 2)
    charge = SimulatedCharge.objects.get()
    assert charge.calls == 2


def test_an_order_not_awaiting_payment_is_not_charged(processing_order):
    order_services.park_order(order_id=processing_order.id, reason="r", error="e", original_event={}, source=SOURCE)

    assert services.charge_order(order_id=processing_order.id, event_id=processing_order.created_event_id, source=SOURCE) is None
    assert not Payment.objects.exists()
    assert not SimulatedCharge.objects.exists()


def test_timeouts_happen_at_the_configured_rate():
    gateway = SimulatedGateway(success_rate=1.0, timeout_rate=0.3, seed="t")
    outcomes = Counter()
    for index in range(300):
        try:
            gateway.charge(idempotency_key=f"t{index}", amount=Decimal("1.00"), currency="USD")
            outcomes["ok"] += 1
        except GatewayTimeout:
            outcomes["timeout"] += 1
    assert 60 < outcomes["timeout"] < 120
