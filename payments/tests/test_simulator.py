"""The simulated gateway: the design's approval share, timeouts, and refunds as a provider makes
them (once per key, never more than the charge captured)."""

from __future__ import annotations

import threading
from collections import Counter
from decimal import Decimal

import pytest
from django.db import connection

from payments.gateway import GatewayTimeout, PaymentGateway
from payments.models import SimulatedCharge, SimulatedRefund
from payments.simulator import SimulatedGateway

pytestmark = pytest.mark.django_db

APPROVE = SimulatedGateway(success_rate=1.0, timeout_rate=0.0, refund_timeout_rate=0.0, refund_failure_rate=0.0, seed="sim")


def captured(amount: str = "30.00", key: str = "order-1:1") -> str:
    """An approved charge of ``amount``; its reference."""
    result = APPROVE.charge(idempotency_key=key, order_id="order-1", amount=Decimal(amount), currency="USD")
    assert result.approved
    return result.reference


def test_the_simulator_implements_the_gateway_interface():
    assert isinstance(APPROVE, PaymentGateway)


def test_simulated_gateway_approves_the_configured_share_reproducibly():
    gateway = SimulatedGateway(success_rate=0.85, timeout_rate=0.0, seed="s1")
    outcomes = [gateway.would_approve(idempotency_key=f"k{index}") for index in range(4000)]

    assert 0.82 < sum(outcomes) / len(outcomes) < 0.88
    again = SimulatedGateway(success_rate=0.85, timeout_rate=0.0, seed="s1")
    assert outcomes == [again.would_approve(idempotency_key=f"k{index}") for index in range(4000)]
    other_seed = SimulatedGateway(success_rate=0.85, timeout_rate=0.0, seed="s2")
    assert outcomes != [other_seed.would_approve(idempotency_key=f"k{index}") for index in range(4000)]


def test_knobs_left_out_come_from_the_settings(settings):
    settings.PAYMENTS = {**settings.PAYMENTS, "success_rate": 0.5, "timeout_rate": 0.25, "seed": "", "latency_ms": 7}

    gateway = SimulatedGateway()

    assert (gateway.success_rate, gateway.timeout_rate, gateway.latency_ms) == (0.5, 0.25, 7)
    # An empty seed: a new one per gateway (per process, as get_gateway builds one).
    assert gateway.seed and gateway.seed != SimulatedGateway().seed


def test_timeouts_happen_at_the_configured_rate():
    gateway = SimulatedGateway(success_rate=1.0, timeout_rate=0.3, seed="t")
    outcomes = Counter()
    for index in range(300):
        try:
            gateway.charge(idempotency_key=f"t{index}", order_id=f"o{index}", amount=Decimal("1.00"), currency="USD")
            outcomes["ok"] += 1
        except GatewayTimeout:
            outcomes["timeout"] += 1
    assert 60 < outcomes["timeout"] < 120


def test_a_refund_is_made_once_per_key():
    charge = captured("30.00")

    first = APPROVE.refund(idempotency_key="r1", charge_reference=charge, amount=Decimal("30.00"))
    again = APPROVE.refund(idempotency_key="r1", charge_reference=charge, amount=Decimal("30.00"))

    assert first.approved and first == again
    refund = SimulatedRefund.objects.get()
    assert (refund.reference, refund.charge_reference, refund.amount, refund.calls) == (first.reference, charge, Decimal("30.00"), 2)


def test_partial_refunds_stop_at_what_the_charge_captured():
    charge = captured("30.00")

    outcomes = [
        APPROVE.refund(idempotency_key=f"part{index}", charge_reference=charge, amount=Decimal(amount))
        for index, amount in enumerate(["10.00", "15.00", "5.01", "5.00"])
    ]

    assert [result.approved for result in outcomes] == [True, True, False, True]
    assert outcomes[2].decline_reason == SimulatedGateway.OVER_CAPTURED
    assert sum(r.amount for r in SimulatedRefund.objects.filter(approved=True)) == Decimal("30.00")
    # Nothing remains: even a cent is declined.
    assert not APPROVE.refund(idempotency_key="cent", charge_reference=charge, amount=Decimal("0.01")).approved


def test_a_declined_or_unknown_charge_is_not_refunded():
    declined = SimulatedGateway(success_rate=0.0, timeout_rate=0.0, seed="sim").charge(
        idempotency_key="declined:1", order_id="o", amount=Decimal("5.00"), currency="USD"
    )
    assert not declined.approved

    for reference in (declined.reference, "sim_unknown"):
        result = APPROVE.refund(idempotency_key=f"r-{reference}", charge_reference=reference, amount=Decimal("1.00"))
        assert (result.approved, result.decline_reason) == (False, SimulatedGateway.UNKNOWN_CHARGE)


def test_a_refund_that_timed_out_is_retried_under_its_key_without_a_second_refund():
    charge = captured("20.00")
    flaky = SimulatedGateway(success_rate=1.0, timeout_rate=1.0, refund_timeout_rate=1.0, refund_failure_rate=0.0, seed="sim")

    with pytest.raises(GatewayTimeout):
        flaky.refund(idempotency_key="slow", charge_reference=charge, amount=Decimal("20.00"))
    result = APPROVE.refund(idempotency_key="slow", charge_reference=charge, amount=Decimal("20.00"))

    assert result.approved
    assert SimulatedRefund.objects.get().calls == 2


@pytest.mark.parametrize("amount", ["0", "-1.00"])
def test_a_refund_of_nothing_is_a_bug_of_the_caller(amount):
    with pytest.raises(ValueError):
        APPROVE.refund(idempotency_key="none", charge_reference=captured(), amount=Decimal(amount))
    assert not SimulatedRefund.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_refunds_of_one_charge_never_pass_what_it_captured():
    charge = captured("30.00")
    results = []
    start = threading.Barrier(8)

    def refund(index: int) -> None:
        try:
            start.wait()
            results.append(APPROVE.refund(idempotency_key=f"c{index}", charge_reference=charge, amount=Decimal("10.00")))
        finally:
            connection.close()

    threads = [threading.Thread(target=refund, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 8
    assert sum(result.approved for result in results) == 3
    assert SimulatedRefund.objects.filter(approved=True).count() == 3
    assert SimulatedCharge.objects.get(reference=charge).amount == Decimal("30.00")
