"""Cancelling and refunding an order at the service level: what each status comes to, the money
never refunded twice nor beyond the charge, the cancel racing the charge."""

from __future__ import annotations

from decimal import Decimal

import pytest

from events.models import OutboxEvent
from payments import services
from payments.models import Payment, Refund, SimulatedRefund
from payments.simulator import SimulatedGateway

pytestmark = pytest.mark.django_db
SOURCE = "test"
APPROVE = SimulatedGateway(success_rate=1.0, timeout_rate=0.0, refund_timeout_rate=0.0, refund_failure_rate=0.0, seed="t")
DECLINE = SimulatedGateway(success_rate=0.0, timeout_rate=0.0, refund_timeout_rate=0.0, refund_failure_rate=0.0, seed="t")


def _charge(order, gateway=APPROVE):
    return services.charge_order(order_id=order.id, event_id=order.created_event_id, source=SOURCE, gateway=gateway)


def _events(order, event_type):
    return list(OutboxEvent.objects.filter(key=str(order.id), event_type=event_type))


def _run_refunds(order, gateway=APPROVE):
    for event in _events(order, "REFUND_REQUESTED"):
        services.refund_payment(
            order_id=order.id, event_id=event.event_id, refund_id=event.payload["details"]["refund"]["id"], source=SOURCE, gateway=gateway
        )
    order.refresh_from_db()


def test_cancelling_before_any_charge_cancels_at_once_and_no_charge_follows(processing_order):
    outcome = services.cancel_order(order_id=processing_order.id, requested_by="client", source=SOURCE)

    processing_order.refresh_from_db()
    assert (outcome.cancellation.answered_status, processing_order.status) == ("CANCELLED", "CANCELLED")
    assert _charge(processing_order) is None
    assert not Payment.objects.exists()
    assert len(_events(processing_order, "ORDER_CANCELLED")) == 1


def test_cancelling_a_paid_order_refunds_it_in_full_then_cancels(processing_order):
    _charge(processing_order)
    outcome = services.cancel_order(order_id=processing_order.id, requested_by="client", reason="changed my mind", source=SOURCE)
    processing_order.refresh_from_db()
    assert (processing_order.status, outcome.cancellation.refund.amount) == ("CANCELLING", Decimal("30.03"))

    _run_refunds(processing_order)

    assert processing_order.status == "CANCELLED"
    payment = Payment.objects.get()
    assert (payment.refunded_amount, payment.refund_reserved) == (Decimal("30.03"), Decimal("30.03"))
    assert SimulatedRefund.objects.get().approved
    assert len(_events(processing_order, "ORDER_REFUNDED")) == 1
    assert len(_events(processing_order, "ORDER_CANCELLED")) == 1


@pytest.mark.parametrize("approved", [True, False])
def test_a_charge_under_way_when_cancelled_ends_cancelled_and_refunded_if_approved(processing_order, approved):
    # The attempt is opened (as the charge step does) before the cancellation is asked for.
    payment = services._open_attempt(order_id=processing_order.id)
    outcome = services.cancel_order(order_id=processing_order.id, requested_by="client", source=SOURCE)
    assert outcome.cancellation.answered_status == "CANCELLING"

    result = services.charge_order(
        order_id=processing_order.id, event_id=processing_order.created_event_id, source=SOURCE, gateway=APPROVE if approved else DECLINE
    )
    assert result.pk == payment.pk
    _run_refunds(processing_order)

    assert processing_order.status == "CANCELLED"
    assert Refund.objects.filter(status="SUCCEEDED").count() == (1 if approved else 0)
    assert Payment.objects.get().refunded_amount == (Decimal("30.03") if approved else 0)


def test_partial_refunds_add_up_to_the_charge_and_no_further(processing_order):
    _charge(processing_order)
    services.request_refund(order_id=processing_order.id, requested_by="client", amount=Decimal("10.00"), source=SOURCE)
    with pytest.raises(services.NotRefundable):
        services.request_refund(order_id=processing_order.id, requested_by="client", amount=Decimal("20.04"), source=SOURCE)
    _run_refunds(processing_order)
    assert processing_order.status == "PARTIALLY_REFUNDED"

    rest = services.request_refund(order_id=processing_order.id, requested_by="client", source=SOURCE).refund
    assert rest.amount == Decimal("20.03")
    _run_refunds(processing_order)

    assert processing_order.status == "REFUNDED"
    assert Payment.objects.get().refunded_amount == Decimal("30.03")
    with pytest.raises(services.NotCancellable):
        services.cancel_order(order_id=processing_order.id, requested_by="client", source=SOURCE)


def test_a_refund_is_made_once_however_often_its_event_comes(processing_order):
    _charge(processing_order)
    services.request_refund(order_id=processing_order.id, requested_by="client", amount=Decimal("5.00"), source=SOURCE)
    for _ in range(3):
        _run_refunds(processing_order)

    assert SimulatedRefund.objects.count() == 1
    assert Payment.objects.get().refunded_amount == Decimal("5.00")


def test_a_declined_refund_is_released_and_can_be_retried_as_a_new_attempt(processing_order):
    _charge(processing_order)
    refund = services.request_refund(order_id=processing_order.id, requested_by="client", amount=Decimal("5.00"), source=SOURCE).refund
    Payment.objects.update(gateway_reference="unknown-charge")  # the gateway knows no such charge: it declines
    _run_refunds(processing_order)
    refund.refresh_from_db()
    assert refund.status == "FAILED"
    assert Payment.objects.get().refund_reserved == 0
    assert len(_events(processing_order, "REFUND_FAILED")) == 1

    retried = services.retry_refund(refund_id=refund.pk, requested_by="operator", source=SOURCE)
    assert (retried.status, retried.attempt, retried.idempotency_key) == ("REQUESTED", 2, f"refund:{refund.pk}:2")
    assert Payment.objects.get().refund_reserved == Decimal("5.00")
