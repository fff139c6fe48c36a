"""Webhook deliveries due: handed to send tasks from the database, which knows every delivery
that is due (a retry's time came, or the task that held it was lost)."""

from __future__ import annotations

import datetime as dt

from messaging.routes import webhook_send_task
from webhooks import services as webhook_services


def dispatch_due_deliveries(*, now: dt.datetime, limit: int) -> int:
    """Hand each delivery due to a send task on the webhooks queue; how many were handed on."""
    delivery_ids = webhook_services.due_deliveries(now=now, limit=limit)
    for delivery_id in delivery_ids:
        webhook_send_task(delivery_id).apply_async()
    return len(delivery_ids)
