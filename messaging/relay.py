"""The outbox relay: publishes outbox rows to Kafka in write order, marking them published
only once the broker confirmed them.

Each batch is claimed (database), produced (Kafka: one round trip, nothing written), recorded
(database: the confirmed rows stamped published with their partition and offset, the others'
errors kept) and counted (metrics and logs).

On PostgreSQL a batch is claimed with ``SELECT ... FOR UPDATE SKIP LOCKED`` and held until its
deliveries are recorded, so several relays share the work without publishing a row twice.
SQLite has no row locks: run one relay there (the local default does).

The producer is ``messaging.producer``'s; with nothing pending the relay waits as
``messaging.wakeup`` says.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import structlog
from confluent_kafka import KafkaException, Producer
from django.db import DatabaseError, connection, transaction
from django.db.models import F
from django.utils import timezone

from common.lifecycle import backoff_delays
from common.metrics import serve_process_metrics
from events.models import OutboxEvent
from messaging.metrics import OUTBOX_PUBLISH_FAILURES, OUTBOX_PUBLISHED
from messaging.producer import Deliveries, build_producer
from messaging.topics import ensure_topics_until_ready
from messaging.tracing import end_publish, start_publish
from messaging.wakeup import NewRowsWait

logger = structlog.get_logger(__name__)


# Batches in a row that failed entirely before the relay replaces its producer anyway.
FAILED_BATCHES_BEFORE_NEW_PRODUCER = 3


@dataclass
class BatchResult:
    published: int = 0
    failed: int = 0
    errors: Counter = field(default_factory=Counter)
    producer_broken: bool = False


def publish_pending_events(*, producer: Producer, batch_size: int, flush_timeout: float) -> BatchResult:
    """Publish up to ``batch_size`` unpublished outbox rows, oldest first; one round trip to Kafka."""
    with claimed_batch(batch_size) as events:
        if not events:
            return BatchResult()
        deliveries = produce_batch(producer, events, flush_timeout=flush_timeout)
        record_deliveries(deliveries)
    return count_deliveries(events, deliveries)


@contextlib.contextmanager
def claimed_batch(batch_size: int) -> Iterator[list[OutboxEvent]]:
    """The oldest ``batch_size`` unpublished rows; on PostgreSQL locked, skipping rows another
    relay holds, until the block ends."""
    pending = OutboxEvent.objects.filter(published_at__isnull=True).order_by("id")
    if connection.features.has_select_for_update_skip_locked:
        with transaction.atomic():
            yield list(pending.select_for_update(skip_locked=True)[:batch_size])
    else:
        yield list(pending[:batch_size])


def produce_batch(producer: Producer, events: list[OutboxEvent], *, flush_timeout: float) -> Deliveries:
    """Send ``events``, each inside its publish span, and wait up to ``flush_timeout`` s for
    Kafka's answers: which rows (by pk) it confirmed, where, and why the others failed."""
    deliveries = Deliveries()
    spans = {}
    for event in events:
        value, headers = _encode(event)
        span, trace_headers = start_publish(
            topic=event.topic, key=event.key, event_id=str(event.event_id), trace_context=event.trace_context
        )
        if span is not None:
            spans[event.pk] = span
        refusal = _send(producer, event, value=value, headers=headers + trace_headers, on_delivery=deliveries.report_for(event.pk))
        if refusal is not None:
            deliveries.failed[event.pk] = refusal
    producer.flush(flush_timeout)
    deliveries.fail_unanswered([event.pk for event in events], error="delivery not confirmed before the flush timeout")
    for pk, span in spans.items():
        end_publish(span, error=deliveries.failed.get(pk))
    return deliveries


def _encode(event: OutboxEvent) -> tuple[bytes, list[tuple[str, bytes]]]:
    value = json.dumps(event.payload, separators=(",", ":"), ensure_ascii=False).encode()
    headers = [(name, str(value).encode()) for name, value in event.headers.items()]
    return value, headers


def _send(
    producer: Producer, event: OutboxEvent, *, value: bytes, headers: list[tuple[str, bytes]], on_delivery: Callable
) -> str | None:
    """Queue one row's message; why not if the producer refused it before sending (a message
    too large, say)."""
    while True:
        try:
            producer.produce(event.topic, key=event.key.encode(), value=value, headers=headers, on_delivery=on_delivery)
            return None
        except BufferError:  # local queue full: let deliveries drain, then go on
            producer.poll(0.1)
        except KafkaException as exc:
            return str(exc)


def record_deliveries(deliveries: Deliveries) -> None:
    """Stamp the confirmed rows published, and count an attempt, with its error, on the others."""
    if deliveries.confirmed:
        _mark_published(deliveries.confirmed)
    for error, pks in _group_by_error(deliveries.failed).items():
        OutboxEvent.objects.filter(pk__in=pks).update(publish_attempts=F("publish_attempts") + 1, last_error=error[:2000])


def _mark_published(confirmed: dict[int, tuple[int, int]]) -> None:
    """Stamp the confirmed rows published, each with where Kafka put it: one statement (UPDATE ...
    FROM VALUES, which SQLite has since 3.33 too) instead of Django's bulk_update, whose CASE
    expressions cost more to build than the rest of the batch."""
    table = OutboxEvent._meta.db_table
    rows = ", ".join(["(%s, %s, %s)"] * len(confirmed))
    # Both databases name the columns of a VALUES list column1, column2, ...
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET published_at = %s, kafka_partition = delivered.column2, kafka_offset = delivered.column3 "
            f"FROM (VALUES {rows}) AS delivered WHERE {table}.id = delivered.column1",
            [timezone.now(), *(value for pk, position in confirmed.items() for value in (pk, *position))],
        )


def _group_by_error(failed: dict[int, str]) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = {}
    for pk, error in failed.items():
        grouped.setdefault(error, []).append(pk)
    return grouped


def count_deliveries(events: list[OutboxEvent], deliveries: Deliveries) -> BatchResult:
    """Count and log a recorded batch: each published row, and how many failed and why."""
    for event in events:
        if event.pk not in deliveries.confirmed:
            continue
        OUTBOX_PUBLISHED.labels(event.topic).inc()
        logger.info(
            "event_published",
            event_id=str(event.event_id),
            event_type=event.event_type,
            topic=event.topic,
            order_id=event.key,
            correlation_id=event.headers.get("correlation_id"),
        )
    OUTBOX_PUBLISH_FAILURES.inc(len(deliveries.failed))
    return BatchResult(
        published=len(deliveries.confirmed),
        failed=len(deliveries.failed),
        errors=Counter(deliveries.failed.values()),
        producer_broken=deliveries.producer_broken,
    )


def run_relay(
    *,
    stop: threading.Event,
    batch_size: int,
    poll_interval: float,
    idle_poll_interval: float,
    max_backoff: float,
    delivery_timeout_ms: int,
    metrics_port: int,
) -> None:
    """Publish until ``stop`` is set: right away while there is a backlog, backing off while Kafka
    or the database is away, and catching up when they return."""
    serve_process_metrics(port=metrics_port, process="relay")
    if not ensure_topics_until_ready(stop=stop, max_backoff=max_backoff):
        return
    producer = build_producer(delivery_timeout_ms=delivery_timeout_ms)
    flush_timeout = delivery_timeout_ms / 1000 + 5
    delays = backoff_delays(start=0.2, ceiling=max_backoff)
    wait_for_new_rows = NewRowsWait(poll_interval=poll_interval, idle_poll_interval=idle_poll_interval)
    failed_in_a_row = 0
    logger.info("relay_started", batch_size=batch_size)
    while not stop.is_set():
        try:
            result = publish_pending_events(producer=producer, batch_size=batch_size, flush_timeout=flush_timeout)
        except DatabaseError as exc:
            logger.warning("relay_database_error", error=str(exc))
            connection.close()  # a fresh connection on the next try (the server may have restarted)
            result = BatchResult(failed=1)
        failed_in_a_row = failed_in_a_row + 1 if result.failed and not result.published else 0
        # A broker that lost its state (restarted empty) can leave an idempotent producer timing
        # out on every batch without reporting it fatal: after a few such batches, start afresh.
        if result.producer_broken or failed_in_a_row >= FAILED_BATCHES_BEFORE_NEW_PRODUCER:
            logger.warning("relay_producer_replaced", errors=dict(result.errors), failed_batches=failed_in_a_row)
            producer = build_producer(delivery_timeout_ms=delivery_timeout_ms)
            failed_in_a_row = 0
        if result.failed:
            delay = next(delays)
            logger.warning("relay_publish_failed", failed=result.failed, published=result.published, errors=dict(result.errors), retry_in=delay)
            stop.wait(delay)
            continue
        delays = backoff_delays(start=0.2, ceiling=max_backoff)
        if result.published < batch_size:
            wait_for_new_rows(stop, published=result.published)
    wait_for_new_rows.close()
    producer.flush(flush_timeout)
    logger.info("relay_stopped")
