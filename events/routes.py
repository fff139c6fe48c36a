"""Which Celery work each event type starts. The bridge knows tasks only by name."""

from __future__ import annotations

from typing import Any

from celery import Signature, chain

from events.contract import NOTIFICATION_SENT, ORDER_CREATED, ORDER_PAID, ORDER_PROCESSING, PAYMENT_FAILED
from orders_project.celery import app

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
    if event_type in (ORDER_PROCESSING, ORDER_PAID, PAYMENT_FAILED):
        return [_task(SEND_NOTIFICATIONS, envelope)]
    if event_type == NOTIFICATION_SENT:
        return []  # an announcement for other consumers; this service has nothing more to do
    raise ValueError(f"no route for {event_type}")  # parse_event lets only contract types through
