"""Which Celery work each event type starts. The bridge knows tasks only by name."""

from __future__ import annotations

import base64
from typing import Any

from celery import Signature, chain

from events.contract import NOTIFICATION_SENT, ORDER_CREATED, ORDER_PAID, ORDER_PROCESSING, PAYMENT_FAILED
from orders_project.celery import app

ARCHIVE_DEAD_LETTER = "events.archive_dead_letter"
PROCESS_ORDER = "orders.process_order"
CHARGE_PAYMENT = "payments.charge_payment"
SEND_NOTIFICATIONS = "notifications.send_notifications"


def _task(name: str, envelope: dict[str, Any]) -> Signature:
    return app.signature(name, args=(envelope,), immutable=True)


def tasks_for(envelope: dict[str, Any]) -> list[Signature]:
    """The tasks to start for a parsed event (an empty list: nothing to do here)."""
    event_type = envelope["type"]
    if event_type == ORDER_CREATED:
        return [
            chain(_task(PROCESS_ORDER, envelope), _task(CHARGE_PAYMENT, envelope)),
            _task(SEND_NOTIFICATIONS, envelope),
        ]
    if event_type == ORDER_PROCESSING and envelope["metadata"].get("attempt", 1) > 1:
        # An operator's payment retry: charge again (a new attempt), and tell the customer.
        return [_task(CHARGE_PAYMENT, envelope), _task(SEND_NOTIFICATIONS, envelope)]
    if event_type in (ORDER_PROCESSING, ORDER_PAID, PAYMENT_FAILED):
        return [_task(SEND_NOTIFICATIONS, envelope)]
    if event_type == NOTIFICATION_SENT:
        return []  # an announcement for other consumers; this service has nothing more to do
    raise ValueError(f"no route for {event_type}")  # parse_event lets only contract types through


def dead_letter_task(*, key: bytes | None, headers: list[tuple[str, bytes]], value: bytes | None) -> Signature:
    """The task that archives a dlq message (its bytes travel base64 in the task's JSON)."""
    message = {
        "key": key.decode(errors="replace") if key else None,
        "headers": {name: raw.decode(errors="replace") for name, raw in headers},
        "value_b64": base64.b64encode(value or b"").decode(),
    }
    return app.signature(ARCHIVE_DEAD_LETTER, args=(message,), immutable=True)
