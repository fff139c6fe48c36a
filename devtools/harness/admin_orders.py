"""Orders the admin tests act on: new, charged by a gateway that approves or declines, parked into
a dead letter; written through the services, as the pipeline's steps write them."""

from __future__ import annotations

import json

from devtools.harness.sample_orders import create_test_order
from events import services as event_services
from events.models import DeadLetter, OutboxEvent
from orders import services
from orders.models import Order
from payments import services as payment_services
from payments.simulator import SimulatedGateway

APPROVE = SimulatedGateway(success_rate=1.0, timeout_rate=0.0, seed="admin-actions")
DECLINE = SimulatedGateway(success_rate=0.0, timeout_rate=0.0, seed="admin-actions")


def new_order() -> Order:
    return create_test_order(user_id="ops", email="ops@example.com", price="12.50", correlation_id="corr-ops")


def created_event(order: Order) -> dict:
    return OutboxEvent.objects.get(key=str(order.id), event_type="ORDER_CREATED").payload


def charged_order(gateway: SimulatedGateway) -> Order:
    order = new_order()
    envelope = created_event(order)
    services.start_processing(order_id=order.id, event_id=envelope["event_id"], source="test")
    payment_services.charge_order(order_id=order.id, event_id=envelope["event_id"], source="test", gateway=gateway)
    order.refresh_from_db()
    return order


def archive_outbox_dead_letter(row: OutboxEvent) -> DeadLetter:
    """What the bridge does when the relay published this dlq row."""
    value = json.dumps(row.payload).encode()
    return event_services.archive_dead_letter(key=row.key, headers=row.headers, value=value)
