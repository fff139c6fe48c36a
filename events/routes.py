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
SEND_NOTIFICATIONS = "notifications.send_notifications_batch"
NOTIFICATIONS_PER_TASK = 20


def _task(name: str, envelope: dict[str, Any]) -> Signature:
    return app.signature(name, args=(envelope,), immutable=True)


def tasks_for(envelope: dict[str, Any]) -> list[Signature]:
    """The pipeline tasks to start for a parsed event (an empty list: nothing to do here).
    The customer's notifications are not among them: see ``notifies``."""
    event_type = envelope["type"]
    if event_type == ORDER_CREATED:
        return [chain(_task(PROCESS_ORDER, envelope), _task(CHARGE_PAYMENT, envelope))]
    if event_type == ORDER_PROCESSING and envelope["metadata"].get("attempt", 1) > 1:
        # An operator's payment retry: charge again (a new attempt).
        return [_task(CHARGE_PAYMENT, envelope)]
    if event_type in (ORDER_PROCESSING, ORDER_PAID, PAYMENT_FAILED, NOTIFICATION_SENT):
        return []  # NOTIFICATION_SENT: an announcement for other consumers
    raise ValueError(f"no route for {event_type}")  # parse_event lets only contract types through


def notifies(envelope: dict[str, Any]) -> bool:
    """Whether the customer is told about this event."""
    return envelope["type"] in (ORDER_CREATED, ORDER_PROCESSING, ORDER_PAID, PAYMENT_FAILED)


def notification_tasks(envelopes: list[dict[str, Any]]) -> list[Signature]:
    """The notifications of a batch of events, a few events per task.

    Celery's own work per task (receive, ack, trace, two log lines) was most of a notification's
    cost, and every order has three. Tasks of NOTIFICATIONS_PER_TASK events still spread a large
    batch over the worker's threads.
    """
    return [
        app.signature(SEND_NOTIFICATIONS, args=(envelopes[start : start + NOTIFICATIONS_PER_TASK],), immutable=True)
        for start in range(0, len(envelopes), NOTIFICATIONS_PER_TASK)
    ]


def dead_letter_task(*, key: bytes | None, headers: list[tuple[str, bytes]], value: bytes | None) -> Signature:
    """The task that archives a dlq message (its bytes travel base64 in the task's JSON)."""
    message = {
        "key": key.decode(errors="replace") if key else None,
        "headers": {name: raw.decode(errors="replace") for name, raw in headers},
        "value_b64": base64.b64encode(value or b"").decode(),
    }
    return app.signature(ARCHIVE_DEAD_LETTER, args=(message,), immutable=True)
