"""Writes to the outbox. Callers run these inside their own transaction."""

from __future__ import annotations

import uuid
from typing import Any

from django.utils import timezone

from events.contract import EVENT_TOPICS, build_envelope
from events.models import OutboxEvent


def enqueue_event(
    *, event_type: str, order: dict[str, Any], correlation_id: str, source: str, attempt: int = 1
) -> OutboxEvent:
    """Record ``event_type`` for ``order`` (a contract snapshot) in the outbox; the relay publishes it."""
    event_id = uuid.uuid4()
    now = timezone.now()
    envelope = build_envelope(
        event_id=event_id,
        event_type=event_type,
        order=order,
        correlation_id=correlation_id,
        occurred_at=now,
        source=source,
        attempt=attempt,
    )
    return OutboxEvent.objects.create(
        event_id=event_id,
        event_type=event_type,
        topic=EVENT_TOPICS[event_type],
        key=order["id"],
        payload=envelope,
        headers={"event_type": event_type, "event_id": str(event_id), "correlation_id": correlation_id},
        created_at=now,
    )
