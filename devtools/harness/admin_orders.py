"""Orders the admin tests act on: new, charged by a gateway that approves or declines, refunded,
parked into a dead letter; written through the services, as the pipeline's steps write them."""

from __future__ import annotations

import json

from django.conf import settings
from devtools.harness.sample_orders import create_test_order
from events import services as event_services
from events.contract import REFUND_REQUESTED
from events.models import DeadLetter, OutboxEvent
from orders import services
from orders.models import Order
from payments import services as payment_services
from payments.models import SimulatedCharge
from payments.simulator import SimulatedGateway

# Refunds never time out nor fail here: the tests say when one fails (``give_up_refunds``).
DETERMINISTIC_REFUNDS = {"refund_timeout_rate": 0.0, "refund_failure_rate": 0.0}
APPROVE = SimulatedGateway(success_rate=1.0, timeout_rate=0.0, seed="admin-actions", **DETERMINISTIC_REFUNDS)
DECLINE = SimulatedGateway(success_rate=0.0, timeout_rate=0.0, seed="admin-actions", **DETERMINISTIC_REFUNDS)


def new_order() -> Order:
    return create_test_order(user_id="ops", email="ops@example.com", price="12.50", correlation_id="corr-ops")


def created_event(order: Order) -> dict:
    return OutboxEvent.objects.get(key=str(order.id), event_type="ORDER_CREATED").payload


def processing_order() -> Order:
    order = new_order()
    services.start_processing(order_id=order.id, event_id=created_event(order)["event_id"], source="test")
    order.refresh_from_db()
    return order


def charged_order(gateway: SimulatedGateway) -> Order:
    order = processing_order()
    payment_services.charge_order(order_id=order.id, event_id=created_event(order)["event_id"], source="test", gateway=gateway)
    order.refresh_from_db()
    return order


def lost_charge(order: Order, *, attempt: int = 1) -> SimulatedCharge:
    """A charge the provider made for ``order`` (attempt ``attempt``'s key) that the database never
    recorded: what a restore to a backup taken before the charge leaves."""
    key = f"{order.id}:{attempt}"
    APPROVE.charge(idempotency_key=key, order_id=str(order.id), amount=order.total_amount, currency=settings.PAYMENTS["currency"])
    return SimulatedCharge.objects.get(idempotency_key=key)


def _requested_refunds(order: Order) -> list[OutboxEvent]:
    return list(OutboxEvent.objects.filter(key=str(order.id), event_type=REFUND_REQUESTED).order_by("id"))


def give_back_refunds(order: Order) -> None:
    """The pipeline's refund step for each REFUND_REQUESTED event of the order, the gateway approving."""
    for event in _requested_refunds(order):
        payment_services.refund_payment(
            order_id=order.id, event_id=event.event_id, refund_id=event.payload["details"]["refund"]["id"], source="test", gateway=APPROVE
        )
    order.refresh_from_db()


def give_up_refunds(order: Order) -> None:
    """The pipeline's give-up for each of the order's refunds still requested: the gateway kept failing."""
    for event in _requested_refunds(order):
        payment_services.give_up_refund(
            order_id=order.id,
            refund_id=event.payload["details"]["refund"]["id"],
            error="GatewayUnavailable: simulated",
            original_event=event.payload,
            reason="refund_gave_up",
            source="test",
        )
    order.refresh_from_db()


def archive_outbox_dead_letter(row: OutboxEvent) -> DeadLetter:
    """What the bridge does when the relay published this dlq row."""
    value = json.dumps(row.payload).encode()
    return event_services.archive_dead_letter(key=row.key, headers=row.headers, value=value)
