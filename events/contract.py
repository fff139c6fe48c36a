"""The event contract of DESIGN.md: event types, their topics and the JSON envelope."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

ORDER_CREATED = "ORDER_CREATED"
ORDER_PROCESSING = "ORDER_PROCESSING"
ORDER_PAID = "ORDER_PAID"
PAYMENT_FAILED = "PAYMENT_FAILED"
NOTIFICATION_SENT = "NOTIFICATION_SENT"

TOPIC_ORDERS = "orders"
TOPIC_PAYMENTS = "payments"
TOPIC_NOTIFICATIONS = "notifications"
TOPIC_DLQ = "dlq"

EVENT_TOPICS = {
    ORDER_CREATED: TOPIC_ORDERS,
    ORDER_PROCESSING: TOPIC_ORDERS,
    ORDER_PAID: TOPIC_PAYMENTS,
    PAYMENT_FAILED: TOPIC_PAYMENTS,
    NOTIFICATION_SENT: TOPIC_NOTIFICATIONS,
}

TOPIC_PARTITIONS = {TOPIC_ORDERS: 3, TOPIC_PAYMENTS: 3, TOPIC_NOTIFICATIONS: 3, TOPIC_DLQ: 1}


def isoformat(moment: dt.datetime) -> str:
    """UTC timestamps as in the contract: ``2026-01-01T10:30:00Z``."""
    return moment.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def build_envelope(
    *,
    event_id: uuid.UUID,
    event_type: str,
    order: dict[str, Any],
    correlation_id: str,
    occurred_at: dt.datetime,
    source: str,
    attempt: int = 1,
) -> dict[str, Any]:
    if event_type not in EVENT_TOPICS:
        raise ValueError(f"Unknown event type {event_type!r}")
    return {
        "event_id": str(event_id),
        "type": event_type,
        "order": order,
        "timestamp": isoformat(occurred_at),
        "metadata": {"correlation_id": correlation_id, "source": source, "attempt": attempt},
    }
