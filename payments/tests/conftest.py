"""Fixtures of the payments tests."""

from __future__ import annotations

from decimal import Decimal

import pytest

from devtools.harness.sample_orders import create_test_order
from events.models import OutboxEvent
from orders import services as order_services
from payments import services
from payments.models import Refund
from payments.simulator import SimulatedGateway

SOURCE = "test"
# Approves every charge and refund and always answers: what is made is decided by the ledger alone.
APPROVING = SimulatedGateway(success_rate=1.0, timeout_rate=0.0, refund_timeout_rate=0.0, refund_failure_rate=0.0, seed="payments")


@pytest.fixture
def processing_order():
    order = create_test_order(user_id="pay", email="pay@example.com", quantity=3, price="10.01", correlation_id="corr-pay")
    event_id = OutboxEvent.objects.get(key=str(order.id)).event_id
    order_services.start_processing(order_id=order.id, event_id=event_id, source=SOURCE)
    order.refresh_from_db()
    order.created_event_id = event_id
    return order


@pytest.fixture
def refunded(processing_order) -> Refund:
    """A paid order (30.03) with a refund of 10.00, both made at the (simulated) provider."""
    services.charge_order(order_id=processing_order.id, event_id=processing_order.created_event_id, source=SOURCE, gateway=APPROVING)
    refund = services.request_refund(order_id=processing_order.id, requested_by="client", amount=Decimal("10.00"), source=SOURCE).refund
    event = OutboxEvent.objects.get(key=str(processing_order.id), event_type="REFUND_REQUESTED")
    services.refund_payment(order_id=processing_order.id, event_id=event.event_id, refund_id=refund.id, source=SOURCE, gateway=APPROVING)
    return Refund.objects.select_related("payment").get(pk=refund.pk)
