"""The event contract (docs/design.md): event types, their topics, the JSON envelope and its checks."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import Any

ORDER_CREATED = "ORDER_CREATED"
ORDER_PROCESSING = "ORDER_PROCESSING"
ORDER_PAID = "ORDER_PAID"
PAYMENT_FAILED = "PAYMENT_FAILED"
NOTIFICATION_SENT = "NOTIFICATION_SENT"
# Not an order event: the type of outbox rows bound for the dead-letter topic.
DEAD_LETTER = "DEAD_LETTER"

TOPIC_ORDERS = "orders"
TOPIC_PAYMENTS = "payments"
TOPIC_NOTIFICATIONS = "notifications"
TOPIC_DLQ = "dlq"

# Events about an order's status: the pipeline acts on each, and the customer is told of each.
# NOTIFICATION_SENT is an announcement for other consumers.
ORDER_STATUS_EVENTS = (ORDER_CREATED, ORDER_PROCESSING, ORDER_PAID, PAYMENT_FAILED)

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
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON envelope; ``details`` adds a type-specific object (a notification's channel, say)."""
    if event_type not in EVENT_TOPICS:
        raise ValueError(f"Unknown event type {event_type!r}")
    envelope = {
        "event_id": str(event_id),
        "type": event_type,
        "order": order,
        "timestamp": isoformat(occurred_at),
        "metadata": {"correlation_id": correlation_id, "source": source, "attempt": attempt},
    }
    if details:
        envelope["details"] = details
    return envelope


@dataclass(frozen=True)
class Event:
    """A contract event. ``payload`` is its JSON envelope exactly as the outbox recorded it: what
    Kafka messages and Celery task arguments carry."""

    payload: dict[str, Any]

    @property
    def event_id(self) -> str:
        return self.payload["event_id"]

    @property
    def type(self) -> str:
        return self.payload["type"]

    @property
    def order(self) -> dict[str, Any]:
        return self.payload["order"]

    @property
    def order_id(self) -> str:
        return self.payload["order"]["id"]

    @property
    def correlation_id(self) -> str:
        return self.payload["metadata"]["correlation_id"]

    @property
    def attempt(self) -> int:
        """1 for an order's first round; an operator's payment retry counts up from 2."""
        return self.payload["metadata"].get("attempt", 1)

    def log_context(self) -> dict[str, str]:
        """The ids every log line about this event carries."""
        return {"event_id": self.event_id, "order_id": self.order_id, "correlation_id": self.correlation_id}


def message_headers(*, event_type: str, event_id: str, correlation_id: str) -> dict[str, str]:
    """The Kafka headers every event carries."""
    return {"event_type": event_type, "event_id": event_id, "correlation_id": correlation_id}


def dead_letter_headers(*, reason: str, error: str, source: str, **origin: Any) -> dict[str, str]:
    """Headers of a dlq message: why it is there and where it came from.

    The message value is the original bytes, untouched, so it can be fixed and re-published.
    """
    headers = {"dlq_reason": reason, "dlq_error": error[:2000], "dlq_source": source}
    headers.update({f"dlq_original_{name}": str(value) for name, value in origin.items() if value is not None})
    return headers


class InvalidEvent(Exception):
    """A message the bridge cannot handle; ``reason`` is a short code for the dlq headers."""

    def __init__(self, reason: str, error: str):
        super().__init__(f"{reason}: {error}")
        self.reason = reason
        self.error = error


_ORDER_FIELDS = ("id", "user_id", "email", "items", "total_amount", "status")


def _require_uuid(value: Any, name: str) -> None:
    try:
        uuid.UUID(str(value))
    except ValueError:
        raise InvalidEvent("invalid_envelope", f"{name} is not a UUID: {value!r}"[:300]) from None


def parse_event(raw: bytes | None, *, max_bytes: int) -> Event:
    """Decode and check a message value against the envelope; raises ``InvalidEvent``."""
    if not raw:
        raise InvalidEvent("empty", "message has no value")
    if len(raw) > max_bytes:
        raise InvalidEvent("too_large", f"{len(raw)} bytes, limit {max_bytes}")
    try:
        envelope = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEvent("not_json", str(exc)) from None
    if not isinstance(envelope, dict):
        raise InvalidEvent("invalid_envelope", f"expected a JSON object, got {type(envelope).__name__}")
    event_type = envelope.get("type")
    if event_type not in EVENT_TOPICS:
        raise InvalidEvent("unknown_type", f"event type {event_type!r}"[:300])
    _require_uuid(envelope.get("event_id"), "event_id")
    order = envelope.get("order")
    if not isinstance(order, dict) or any(name not in order for name in _ORDER_FIELDS):
        raise InvalidEvent("invalid_envelope", f"order must be an object with {', '.join(_ORDER_FIELDS)}")
    _require_uuid(order["id"], "order.id")
    if not isinstance(order["items"], list):
        raise InvalidEvent("invalid_envelope", "order.items must be a list")
    metadata = envelope.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("correlation_id"), str):
        raise InvalidEvent("invalid_envelope", "metadata.correlation_id is required")
    return Event(envelope)


def check_recorded(event: Event, *, recorded: list[dict[str, Any]]) -> None:
    """Raise ``InvalidEvent`` unless ``event`` is an event this service wrote: one of
    ``recorded``, the payloads its outbox holds under the event's id. Writing to a topic does not
    make a message trusted: handlers act only on events the database vouches for."""
    if not recorded:
        raise InvalidEvent("unknown_event", f"no event {event.event_id} in the outbox: not written by this service")
    if event.payload not in recorded:
        raise InvalidEvent(
            "event_mismatch", f"event {event.event_id} differs from what the outbox recorded under its id"
        )
