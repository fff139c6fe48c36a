"""The gateway is a setting: the class PAYMENTS_GATEWAY_CLASS names is the one the pipeline charges
through, swapped by changing the setting, and a class that is not a gateway is refused."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.exceptions import ImproperlyConfigured

from events.models import OutboxEvent
from orders.models import Order, OrderStatus
from payments.gateway import (
    ChargeResult,
    GatewayTimeout,
    PaymentGateway,
    RefundResult,
    gateway_class,
    get_gateway,
)
from payments.models import Payment, SimulatedCharge
from payments.simulator import SimulatedGateway
from pipeline.tasks import charge_payment


class AlwaysTimesOut:
    """A provider that never answers in time."""

    def charge(self, *, idempotency_key: str, order_id: str, amount: Decimal, currency: str) -> ChargeResult:
        raise GatewayTimeout(f"no answer for {idempotency_key}")

    def refund(self, *, idempotency_key: str, charge_reference: str, amount: Decimal) -> RefundResult:
        raise GatewayTimeout(f"no answer for {idempotency_key}")


TIMES_OUT = f"{__name__}.AlwaysTimesOut"


@pytest.fixture
def gateway_setting(settings):
    def use(path: str) -> None:
        settings.PAYMENTS = {**settings.PAYMENTS, "gateway_class": path}

    return use


def test_the_local_default_is_the_simulator_built_once_per_process():
    gateway = get_gateway()

    assert type(gateway) is SimulatedGateway
    assert get_gateway() is gateway


def test_changing_the_setting_swaps_the_gateway(gateway_setting):
    simulator = get_gateway()

    gateway_setting(TIMES_OUT)
    swapped = get_gateway()
    assert type(swapped) is AlwaysTimesOut and isinstance(swapped, PaymentGateway)
    assert get_gateway() is swapped

    gateway_setting("payments.simulator.SimulatedGateway")
    assert type(get_gateway()) is SimulatedGateway and get_gateway() is not simulator


@pytest.mark.django_db
def test_the_pipeline_charges_through_the_configured_gateway_and_parks_the_order_when_it_keeps_timing_out(
    gateway_setting, processing_order
):
    gateway_setting(TIMES_OUT)
    payload = OutboxEvent.objects.get(event_id=processing_order.created_event_id).payload

    # Two retries left: the call and two retries, then the give-up (run eagerly, without the waits).
    charge_payment.apply(args=(payload,), retries=charge_payment.max_retries - 2)

    order = Order.objects.get(pk=processing_order.pk)
    assert order.status == OrderStatus.FAILED
    assert order.timeline.get(status=OrderStatus.FAILED).message.startswith("payment_gave_up: GatewayTimeout")
    payment = Payment.objects.get(order=order)
    assert (payment.status, payment.gateway_calls) == ("PENDING", 3)
    assert not SimulatedCharge.objects.exists()


@pytest.mark.parametrize(
    "path, problem",
    [("payments.nowhere.Gateway", "cannot be imported"), ("payments.models.Payment", "it has no charge or refund")],
)
def test_a_class_that_is_not_a_gateway_is_refused_with_the_setting_named(path, problem):
    with pytest.raises(ImproperlyConfigured, match=f"PAYMENTS_GATEWAY_CLASS='{path}'.*{problem}"):
        gateway_class(path)
