"""The outbox relay: publishes outbox rows to Kafka in write order, marking them published
only once the broker confirmed them.

On PostgreSQL a batch is claimed with ``SELECT ... FOR UPDATE SKIP LOCKED`` and held until
its delivery is confirmed, so several relays share the work without publishing a row twice.
SQLite has no row locks: run one relay there (the local default does).

With nothing pending, the relay waits for new rows (``_NewRowsWait``): on PostgreSQL until a
transaction that added some commits, on SQLite for the next poll.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import psycopg
import structlog
from confluent_kafka import KafkaError, KafkaException, Producer
from django.db import DatabaseError, connection, transaction
from django.db.models import F
from django.utils import timezone

from common.lifecycle import backoff_delays
from common.metrics import serve_process_metrics
from events.models import OUTBOX_CHANNEL, OutboxEvent
from messaging.kafka import client_config, delivery_error
from messaging.metrics import OUTBOX_PUBLISH_FAILURES, OUTBOX_PUBLISHED
from messaging.topics import ensure_topics_until_ready
from messaging.tracing import end_publish, start_publish

logger = structlog.get_logger(__name__)


def build_producer(*, delivery_timeout_ms: int) -> Producer:
    """An idempotent producer: no duplicates or reordering from its own retries."""
    return Producer(
        client_config(
            **{
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "delivery.timeout.ms": delivery_timeout_ms,
            }
        )
    )


# Errors after which an idempotent producer cannot go on (a broker that restarted may no longer
# know its producer id): only a new producer can publish again.
PRODUCER_RESET_ERRORS = frozenset(
    {KafkaError._FATAL, KafkaError.PRODUCER_FENCED, KafkaError.UNKNOWN_PRODUCER_ID, KafkaError.INVALID_PRODUCER_EPOCH}
)


# Batches in a row that failed entirely before the relay replaces its producer anyway.
FAILED_BATCHES_BEFORE_NEW_PRODUCER = 3


def needs_new_producer(error: KafkaError) -> bool:
    return error.fatal() or error.code() in PRODUCER_RESET_ERRORS


@dataclass
class BatchResult:
    published: int = 0
    failed: int = 0
    errors: Counter = field(default_factory=Counter)
    producer_broken: bool = False


@contextlib.contextmanager
def _claimed_batch(batch_size: int):
    pending = OutboxEvent.objects.filter(published_at__isnull=True).order_by("id")
    if connection.features.has_select_for_update_skip_locked:
        with transaction.atomic():
            yield list(pending.select_for_update(skip_locked=True)[:batch_size])
    else:
        yield list(pending[:batch_size])


# How soon a relay waiting for a notification notices that it was asked to stop.
STOP_CHECK_INTERVAL = 0.25


class _NewRowsWait:
    """How the relay waits for rows to publish when it found too few.

    While rows keep coming it sleeps ``poll_interval``, so that the next batch gathers what was
    written meanwhile. Once it found none, on PostgreSQL, it LISTENs, on an autocommit connection
    of its own (no transaction held open), for the NOTIFY the outbox's trigger sends when rows are
    committed, and looks anyway after ``idle_poll_interval`` without one; other databases poll.
    """

    def __init__(self, *, poll_interval: float, idle_poll_interval: float):
        self.listens = connection.vendor == "postgresql"
        self.poll_interval = poll_interval
        self.idle_poll_interval = idle_poll_interval
        self.listener: psycopg.Connection | None = None
        self.reconnect_delays = backoff_delays(start=0.2, ceiling=idle_poll_interval)

    def __call__(self, stop: threading.Event, *, published: int) -> None:
        if published or not self.listens:
            stop.wait(self.poll_interval)
        elif self.listener is None:
            self._listen(stop)
        else:
            try:
                self._wait_for_notification(stop)
            except psycopg.Error as exc:  # the server restarted, or ended this connection
                logger.warning("relay_listen_lost", error=str(exc))
                self.close()

    def _wait_for_notification(self, stop: threading.Event) -> None:
        """Until a notification comes, ``idle_poll_interval`` passes or ``stop`` is set."""
        deadline = time.monotonic() + self.idle_poll_interval
        while not stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
            if list(self.listener.notifies(timeout=min(remaining, STOP_CHECK_INTERVAL), stop_after=1)):
                # Read the ones queued behind it too: the relay's next look covers their rows.
                list(self.listener.notifies(timeout=0))
                return

    def _listen(self, stop: threading.Event) -> None:
        """Connect and LISTEN, then return at once: rows committed while nobody listened
        notified no one, so the relay looks now."""
        try:
            self.listener = psycopg.connect(**connection.get_connection_params(), autocommit=True)
            self.listener.execute(f"LISTEN {OUTBOX_CHANNEL}")
        except psycopg.Error as exc:
            self.close()
            delay = next(self.reconnect_delays)
            logger.warning("relay_listen_failed", error=str(exc), retry_in=delay)
            stop.wait(delay)
            return
        self.reconnect_delays = backoff_delays(start=0.2, ceiling=self.idle_poll_interval)
        logger.info("relay_listening", channel=OUTBOX_CHANNEL)

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None


def _encode(event: OutboxEvent) -> tuple[bytes, list[tuple[str, bytes]]]:
    value = json.dumps(event.payload, separators=(",", ":"), ensure_ascii=False).encode()
    headers = [(name, str(value).encode()) for name, value in event.headers.items()]
    return value, headers


def publish_pending_events(*, producer: Producer, batch_size: int, flush_timeout: float) -> BatchResult:
    """Publish up to ``batch_size`` unpublished outbox rows, oldest first; one round trip to Kafka."""
    result = BatchResult()
    with _claimed_batch(batch_size) as events:
        if not events:
            return result
        delivered: dict[int, tuple[int, int]] = {}  # pk: (partition, offset)
        failures: dict[int, str] = {}

        def on_delivery(event_pk: int):
            def report(error, message):
                error = delivery_error(error, message)
                if error is None:
                    delivered[event_pk] = (message.partition(), message.offset())
                else:
                    failures[event_pk] = str(error)
                    result.producer_broken |= needs_new_producer(error)

            return report

        spans = {}
        for event in events:
            value, headers = _encode(event)
            span, trace_headers = start_publish(
                topic=event.topic, key=event.key, event_id=str(event.event_id), trace_context=event.trace_context
            )
            if span is not None:
                spans[event.pk] = span
            headers += trace_headers
            while True:
                try:
                    producer.produce(
                        event.topic, key=event.key.encode(), value=value, headers=headers, on_delivery=on_delivery(event.pk)
                    )
                    break
                except BufferError:  # local queue full: let deliveries drain, then go on
                    producer.poll(0.1)
                except KafkaException as exc:  # refused before sending (a message too large, say)
                    failures[event.pk] = str(exc)
                    break
        producer.flush(flush_timeout)
        undelivered = {event.pk for event in events} - set(delivered) - set(failures)
        failures.update(dict.fromkeys(undelivered, "delivery not confirmed before the flush timeout"))
        for pk, span in spans.items():
            end_publish(span, error=failures.get(pk))
        if delivered:
            _mark_published(delivered)
        for error, pks in _group_by_error(failures).items():
            OutboxEvent.objects.filter(pk__in=pks).update(publish_attempts=F("publish_attempts") + 1, last_error=error[:2000])
    for event in events:
        if event.pk in failures:
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
    result.published = len(delivered)
    result.failed = len(failures)
    OUTBOX_PUBLISH_FAILURES.inc(len(failures))
    result.errors.update(failures.values())
    return result


def _mark_published(delivered: dict[int, tuple[int, int]]) -> None:
    """Stamp the delivered rows published, each with where Kafka put it: one statement (UPDATE ...
    FROM VALUES, which SQLite has since 3.33 too) instead of Django's bulk_update, whose CASE
    expressions cost more to build than the rest of the batch."""
    table = OutboxEvent._meta.db_table
    rows = ", ".join(["(%s, %s, %s)"] * len(delivered))
    # Both databases name the columns of a VALUES list column1, column2, ...
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET published_at = %s, kafka_partition = delivered.column2, kafka_offset = delivered.column3 "
            f"FROM (VALUES {rows}) AS delivered WHERE {table}.id = delivered.column1",
            [timezone.now(), *(value for pk, position in delivered.items() for value in (pk, *position))],
        )


def _group_by_error(failures: dict[int, str]) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = {}
    for pk, error in failures.items():
        grouped.setdefault(error, []).append(pk)
    return grouped


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
    wait_for_new_rows = _NewRowsWait(poll_interval=poll_interval, idle_poll_interval=idle_poll_interval)
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
