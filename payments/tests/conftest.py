"""Fixtures of the payments tests."""

from __future__ import annotations

import pytest

from devtools.harness.sample_orders import create_test_order
from events.models import OutboxEvent
from orders import services as order_services

SOURCE = "test"


@pytest.fixture
def processing_order():
    order = create_test_order(user_id="pay", email="pay@example.com", quantity=3, price="10.01", correlation_id="corr-pay")
    event_id = OutboxEvent.objects.get(key=str(order.id)).event_id
    order_services.start_processing(order_id=order.id, event_id=event_id, source=SOURCE)
    order.refresh_from_db()
    order.created_event_id = event_id
    return order
