"""Reads of events: what the outbox recorded."""

from __future__ import annotations

from typing import Any

from events.models import OutboxEvent


def recorded_payloads(*, event_ids: set[str]) -> dict[str, list[dict[str, Any]]]:
    """The payloads the outbox holds for each of ``event_ids`` (a re-published event has several)."""
    recorded: dict[str, list[dict[str, Any]]] = {}
    for event_id, payload in OutboxEvent.objects.filter(event_id__in=event_ids).values_list("event_id", "payload"):
        recorded.setdefault(str(event_id), []).append(payload)
    return recorded
