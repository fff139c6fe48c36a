"""Writes to the outbox and the inbox. Callers run these inside their own transaction."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from typing import Any

import structlog
from django.db import connection, transaction
from django.db.models import F
from django.dispatch import Signal
from django.utils import timezone
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from events.contract import (
    DEAD_LETTER,
    EVENT_TOPICS,
    TOPIC_DLQ,
    Event,
    Headers,
    InvalidEvent,
    build_envelope,
    dead_letter_headers,
    decode_json,
    message_headers,
    safe_text,
    text_of,
)
from events.metrics import DEAD_LETTERS
from events.models import DeadLetter, InboxEntry, OutboxEvent

logger = structlog.get_logger(__name__)
# The outbox keeps the W3C trace context only: baggage a caller sent stays out of the database.
W3C_TRACE_CONTEXT = TraceContextTextMapPropagator()


# An order's events are named by what they are (``event_name``), and their ids made from that name:
# an event the database makes again after it was restored to a backup gets the id it had, so that
# consumers, webhook receivers (webhook-id) and mail systems (Message-ID) take it for the copy it is.
EVENT_ID_NAMESPACE = uuid.UUID("5f0e8a61-3c0b-4a8e-9a64-2b1f0c7d9e11")


def order_event_id(*, order_id, name: str) -> uuid.UUID:
    return uuid.uuid5(EVENT_ID_NAMESPACE, f"{order_id}/{name}")


# Sent with each order event ``enqueue_event`` records, in its transaction: apps that keep work of
# their own per event (webhook deliveries) write it there, so that no event goes without it.
order_event_recorded = Signal()


def enqueue_event(**event: Any) -> OutboxEvent:
    """Record one event in the outbox (``enqueue_events``); the relay publishes it."""
    (row,) = enqueue_events(events=[event])
    return row


def enqueue_events(*, events: list[dict[str, Any]]) -> list[OutboxEvent]:
    """Record events in the outbox, in one statement; the relay publishes them. Each is given as
    ``event_type``, ``order`` (a contract snapshot), ``correlation_id``, ``source``, ``name``
    (which tells this event from every other of the order: ``order_event_id``) and, if any,
    ``attempt`` and ``details`` (the event's own fields)."""
    now = timezone.now()
    trace_context = current_trace_context()
    rows = []
    for spec in events:
        event_type, order, correlation_id = spec["event_type"], spec["order"], spec["correlation_id"]
        event_id = order_event_id(order_id=order["id"], name=spec["name"])
        envelope = build_envelope(
            event_id=event_id,
            event_type=event_type,
            order=order,
            correlation_id=correlation_id,
            occurred_at=now,
            source=spec["source"],
            attempt=spec.get("attempt", 1),
            details=spec.get("details"),
        )
        rows.append(
            OutboxEvent(
                event_id=event_id,
                event_type=event_type,
                topic=EVENT_TOPICS[event_type],
                key=order["id"],
                payload=envelope,
                headers=message_headers(event_type=event_type, event_id=str(event_id), correlation_id=correlation_id),
                trace_context=trace_context,
                created_at=now,
            )
        )
    rows = OutboxEvent.objects.bulk_create(rows)
    for row in rows:
        order_event_recorded.send(sender=OutboxEvent, event=row)
    return rows


def current_trace_context() -> dict[str, str]:
    """The W3C trace context of the span in progress (``traceparent``, ``tracestate``); empty
    when none is (tracing off, or a request it does not sample)."""
    if not trace.get_current_span().get_span_context().is_valid:
        return {}
    carrier: dict[str, str] = {}
    W3C_TRACE_CONTEXT.inject(carrier)
    return carrier


def enqueue_dead_letter(
    *, original: dict[str, Any], key: str, reason: str, error: str, source: str, correlation_id: str
) -> OutboxEvent:
    """Record an event that could not be handled for the dlq topic, with the reason in its headers."""
    event_id = uuid.uuid4()
    headers = dead_letter_headers(
        reason=reason, error=error, source=source, event_id=original.get("event_id"), type=original.get("type")
    )
    headers.update(message_headers(event_type=DEAD_LETTER, event_id=str(event_id), correlation_id=correlation_id))
    return OutboxEvent.objects.create(
        event_id=event_id, event_type=DEAD_LETTER, topic=TOPIC_DLQ, key=key, payload=original, headers=headers
    )


def refuse_event(*, event: Event, refusal: InvalidEvent, source: str) -> OutboxEvent:
    """An event a handler will not act on goes to dlq with the reason; nothing else is written."""
    with transaction.atomic():
        return enqueue_dead_letter(
            original=event.payload,
            key=str(event.order_id),
            reason=refusal.reason,
            error=refusal.error,
            source=source,
            correlation_id=event.correlation_id,
        )


def was_handled(*, handler: str, event_id: str) -> bool:
    """True, and the redelivery counted, if ``handler`` already applied ``event_id``."""
    # A read first: the first delivery, by far the most common, then writes nothing.
    if not InboxEntry.objects.filter(handler=handler, event_id=event_id).exists():
        return False
    count_redelivery(handler=handler, event_id=event_id)
    return True


def count_redelivery(*, handler: str, event_id: str) -> None:
    """Count a delivery of an event ``handler`` had applied already (which changes nothing)."""
    InboxEntry.objects.filter(handler=handler, event_id=event_id).update(redeliveries=F("redeliveries") + 1)
    logger.info("event_already_handled", handler=handler, event_id=str(event_id))


def claim_event(*, handler: str, event_id: str) -> bool:
    """Record that ``handler`` applies ``event_id`` in the caller's transaction.

    False when it was applied before (or is being applied by a concurrent transaction that
    committed first): the caller then changes nothing.
    """
    return claim_events(claims=[(handler, event_id)])[0]


def claim_events(*, claims: list[tuple[str, str]]) -> list[bool]:
    """``claim_event`` for several (handler, event id) pairs, in one statement: whether each was
    claimed now; a pair applied before has its redelivery counted."""
    if not claims:
        return []
    table = InboxEntry._meta.db_table
    event_id_field = InboxEntry._meta.get_field("event_id")
    now = timezone.now()
    keys = [(handler, event_id_field.get_db_prep_value(event_id, connection)) for handler, event_id in claims]
    # One statement instead of a savepoint, an insert and a release per pair (SQLite 3.35+, PostgreSQL).
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (handler, event_id, handled_at, redeliveries) VALUES "
            + ", ".join(["(%s, %s, %s, 0)"] * len(keys))
            + " ON CONFLICT (handler, event_id) DO NOTHING RETURNING handler, event_id",
            [value for handler, event_id in keys for value in (handler, event_id, now)],
        )
        inserted = {(handler, event_id_field.get_db_prep_value(event_id, connection)) for handler, event_id in cursor.fetchall()}
    claimed = []
    for key in keys:
        claimed.append(key in inserted)
        inserted.discard(key)  # the same pair twice: the first claims it
    for (handler, event_id), was_claimed in zip(claims, claimed):
        if not was_claimed:
            was_handled(handler=handler, event_id=event_id)  # counts and logs the redelivery
    return claimed


def republish_event(*, event: Event) -> OutboxEvent:
    """Queue an existing event, same id, for publishing again to the topic of its type."""
    return OutboxEvent.objects.create(
        event_id=event.event_id,
        event_type=event.type,
        topic=EVENT_TOPICS[event.type],
        key=event.order_id,
        payload=event.payload,
        headers=message_headers(event_type=event.type, event_id=event.event_id, correlation_id=event.correlation_id),
    )


def archive_dead_letter(
    *,
    key: bytes | str | None,
    headers: Headers | dict[str, str | bytes | None] | None,
    value: bytes | str | None,
    headers_error: str = "",
) -> DeadLetter:
    """Keep a dlq message for operators; the same message archived again is the same row.

    Any key, headers and value are kept: their exact bytes base64, their text for reading (escaped
    where the bytes are not UTF-8 text, and ``escaped`` says where). ``headers`` None: the Kafka
    client could not read them, ``headers_error`` says why."""
    key_bytes = key.encode("utf-8", "surrogatepass") if isinstance(key, str) else key
    value_bytes = (value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value) or b""
    pairs = _header_pairs(headers)
    escaped: list[str] = []
    texts: dict[str, str | None] = {}
    for name, raw in pairs or []:
        name = safe_text(name)
        texts[name] = None if raw is None else text_of(raw)[0]
        if raw is not None and text_of(raw)[1]:
            escaped.append(f"header {name}")
    key_text, key_escaped = text_of(key_bytes) if key_bytes is not None else ("", False)
    value_text, value_escaped = text_of(value_bytes)
    if key_escaped:
        escaped.append("key")
    if value_escaped:
        escaped.append("value")
    # The same digest as before keys and headers were kept as bytes, so a message archived then is the same row.
    fingerprint = hashlib.sha256(json.dumps(texts, sort_keys=True).encode() + b"\0" + value_bytes).hexdigest()
    try:
        readable = decode_json(value_bytes)
    except InvalidEvent:
        readable = None
    event = readable if isinstance(readable, dict) else {}
    order = event.get("order") if isinstance(event.get("order"), dict) else {}

    def header(name: str) -> str:
        return texts.get(name) or ""

    error = header("dlq_error") if pairs is not None else f"the message's headers could not be read: {safe_text(headers_error)}"
    dead_letter, created = DeadLetter.objects.get_or_create(
        fingerprint=fingerprint,
        defaults={
            "reason": (header("dlq_reason") or "unknown")[:64],
            "error": error,
            "source": header("dlq_source")[:64],
            "original_topic": header("dlq_original_topic")[:128],
            "event_id": safe_text(header("dlq_original_event_id") or _as_text(event.get("event_id")))[:64],
            "event_type": safe_text(header("dlq_original_type") or _as_text(event.get("type")))[:64],
            "key": safe_text(key_text or _as_text(order.get("id")))[:128],
            "headers": texts,
            "original_value_b64": base64.b64encode(value_bytes).decode(),
            "value": value_text,
            "original_key_b64": base64.b64encode(key_bytes).decode() if key_bytes else "",
            "original_headers_b64": None
            if pairs is None
            else [[safe_text(name), None if raw is None else base64.b64encode(raw).decode()] for name, raw in pairs],
            "escaped": escaped,
        },
    )
    if created:
        transaction.on_commit(lambda: DEAD_LETTERS.labels(dead_letter.reason).inc())
        logger.info("dead_letter_archived", reason=dead_letter.reason, dead_letter_id=dead_letter.pk, key=dead_letter.key)
    return dead_letter


def _header_pairs(headers: Headers | dict[str, str | bytes | None] | None) -> Headers | None:
    """Headers as (name, bytes or None) pairs, in order, whether given so or as a dict of text."""
    if headers is None:
        return None
    items = headers.items() if isinstance(headers, dict) else headers
    return [
        (str(name), raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw) for name, raw in items
    ]


def _as_text(value: Any) -> str:
    """A value of a dead-lettered event's JSON, for a column: strings as they are, anything else
    as JSON (already bounded in depth by ``decode_json``)."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)[:200]
