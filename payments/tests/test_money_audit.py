"""The fault suites' money audit (devtools.harness.audit.money_audit): clean when the orders and the
simulated gateway's ledger agree, and it names each way they can disagree."""

from __future__ import annotations

from decimal import Decimal

import pytest

from devtools.harness.audit import money_audit
from orders.models import Order
from payments.models import Payment, Refund, SimulatedRefund
from payments.simulator import SimulatedGateway

pytestmark = pytest.mark.django_db
GATEWAY = SimulatedGateway(success_rate=1.0, timeout_rate=0.0, refund_timeout_rate=0.0, refund_failure_rate=0.0, seed="audit")


def test_the_money_of_a_paid_and_partly_refunded_order_adds_up(refunded):
    assert money_audit([str(refunded.order_id)]) == []


def _refund_elsewhere(refund: Refund, *, key: str, amount: str) -> None:
    GATEWAY.refund(idempotency_key=key, charge_reference=refund.payment.gateway_reference, amount=Decimal(amount))


@pytest.mark.parametrize(
    "fault, problem",
    [
        # The gateway gave back money the order does not know of.
        (lambda refund: _refund_elsewhere(refund, key="stray:1", amount="5.00"), "says it kept 20.03, the gateway's ledger 15.03"),
        # The same refund approved again under another attempt's key.
        (lambda refund: _refund_elsewhere(refund, key=f"refund:{refund.pk}:2", amount="10.00"), "approved 2 times at the gateway"),
        # A refund recorded as made that the gateway never made.
        (lambda refund: SimulatedRefund.objects.all().delete(), "SUCCEEDED without an approved refund"),
        # A cancelled order that kept its money.
        (lambda refund: Order.objects.filter(pk=refund.order_id).update(status="CANCELLED"), "(CANCELLED) says it kept 0"),
        # More refunded than the charge captured.
        (lambda refund: SimulatedRefund.objects.update(amount=Decimal("31.00")), "31.00 refunded of 30.03"),
    ],
)
def test_the_money_audit_names_each_disagreement(refunded, fault, problem):
    fault(refunded)
    problems = money_audit([str(refunded.order_id)])
    assert any(problem in line for line in problems), problems


def test_an_order_without_an_approved_payment_keeps_nothing(processing_order):
    GATEWAY.charge(idempotency_key=f"{processing_order.id}:1", order_id=str(processing_order.id), amount=Decimal("30.03"), currency="USD")
    assert not Payment.objects.exists()
    assert money_audit([str(processing_order.id)]) == [
        f"order {processing_order.id} (PROCESSING) says it kept 0, the gateway's ledger 30.03"
    ]
