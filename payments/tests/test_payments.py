"""Charging an order: at-most-once charges, retries after timeouts (through the simulated gateway)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from events.models import OutboxEvent
from orders import services as order_services
from payments import services
from payments.gateway import GatewayTimeout
from payments.models import Payment, SimulatedCharge
from payments.simulator import SimulatedGateway

pytestmark = pytest.mark.django_db
SOURCE = "test"


@pytest.mark.parametrize("rate, status, order_status", [(1.0, "APPROVED", "PAID"), (0.0, "DECLINED", "PAYMENT_FAILED")])
def test_charge_records_payment_and_order_outcome(processing_order, rate, status, order_status):
    gateway = SimulatedGateway(success_rate=rate, timeout_rate=0.0, seed="x")

    payment = services.charge_order(order_id=processing_order.id, event_id=processing_order.created_event_id, source=SOURCE, gateway=gateway)

    processing_order.refresh_from_db()
    assert (payment.status, payment.amount, payment.attempt) == (status, Decimal("30.03"), 1)
    assert processing_order.status == order_status
    charge = SimulatedCharge.objects.get()
    assert (charge.idempotency_key, charge.amount, charge.approved) == (payment.idempotency_key, Decimal("30.03"), rate == 1.0)
    assert (charge.order_id, charge.reference) == (str(processing_order.id), payment.gateway_reference)


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
