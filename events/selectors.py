"""Reads of events: what the outbox recorded."""

from __future__ import annotations

import uuid
from typing import Any

from events.models import InboxEntry, OutboxEvent


def recorded_payloads(*, event_ids: set[str]) -> dict[str, list[dict[str, Any]]]:
    """The payloads the outbox holds for each of ``event_ids`` (a re-published event has several),
    keyed as given. An id that is not a UUID string has none: only UUIDs reach the query, whose
    field would refuse anything else with an error of its own."""
    asked: dict[uuid.UUID, list[str]] = {}
    for event_id in event_ids:
        try:
            asked.setdefault(uuid.UUID(event_id), []).append(event_id)
        except (TypeError, ValueError, AttributeError):
            continue
    recorded: dict[str, list[dict[str, Any]]] = {}
    for event_id, payload in OutboxEvent.objects.filter(event_id__in=list(asked)).values_list("event_id", "payload"):
        for given in asked.get(event_id, ()):
            recorded.setdefault(given, []).append(payload)
    return recorded


def applied(*, handlers: list[str], event_ids: set[str]) -> set[tuple[str, str]]:
    """(handler, event id) for each of ``event_ids`` that one of ``handlers`` applied."""
    # Filtered by handler too, so the (handler, event_id) unique index serves the lookup.
    entries = InboxEntry.objects.filter(handler__in=handlers, event_id__in=event_ids)
    return {(handler, str(event_id)) for handler, event_id in entries.values_list("handler", "event_id")}


def last_applied_id() -> int:
    """The newest inbox entry's id: it grows whenever a handler applies an event."""
    return InboxEntry.objects.order_by("-id").values_list("id", flat=True).first() or 0
