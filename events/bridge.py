"""The Kafka bridge: a consumer-group member that hands each event to its Celery tasks.

Only events the outbox recorded, exactly as recorded, are handed on: anything else (a message
from whoever else can write to the topic, an event altered on its way) goes to the dlq topic
with its reason. Offsets are committed only after every message up to them was dealt with: its
tasks accepted by the Celery broker, or the message itself confirmed on the dlq topic. A crash
in between means redelivery, which the tasks absorb (inbox, state machine).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import structlog
from celery import Signature
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from django.db import DatabaseError, connection

from events.contract import TOPIC_DLQ, InvalidEvent, check_recorded, dead_letter_headers, log_context, parse_event
from events.kafka import client_config, delivery_error
from events.lifecycle import backoff_delays
from events.relay import build_producer, needs_new_producer
from events.routes import dead_letter_task, notification_tasks, notifies, tasks_for
from events.selectors import recorded_payloads
from events.topics import ensure_topics_until_ready
from orders_project.metrics import BRIDGE_DISPATCH_FAILURES, BRIDGE_LAG, BRIDGE_MESSAGES, serve_process_metrics

logger = structlog.get_logger(__name__)

DLQ_SOURCE = "kafka-bridge"
# Seconds between consumer-lag readings, and between lookups of committed offsets for them.
LAG_INTERVAL = 2.0
COMMITTED_LOOKUP_INTERVAL = 10.0
# Seconds before a batch is read again after the database could not be asked about it.
DATABASE_RETRY_DELAY = 1.0


@dataclass(frozen=True)
class BridgeSettings:
    topics: list[str]
    group_id: str
    batch_size: int
    poll_timeout: float
    fetch_wait_ms: int
    max_event_bytes: int
    max_backoff: float
    delivery_timeout_ms: int
    metrics_port: int


class KafkaBridge:
    def __init__(self, *, config: BridgeSettings, stop: threading.Event):
        self.config = config
        self.stop = stop
        self.consumer = Consumer(
            client_config(
                **{
                    "group.id": config.group_id,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    # Rebalances come at once when a bridge stops cleanly (it leaves the group).
                    "session.timeout.ms": 10000,
                    "heartbeat.interval.ms": 2000,
                    "fetch.wait.max.ms": config.fetch_wait_ms,
                }
            )
        )
        self.dlq_producer = self._build_dlq_producer()
        # Next offset to read per partition, for the lag metric.
        self._read_up_to: dict[tuple[str, int], int] = {}
        self._next_committed_lookup = 0.0

    def _on_assign(self, _consumer, partitions) -> None:
        logger.info("partitions_assigned", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])
        self._next_committed_lookup = 0.0

    def _on_revoke(self, _consumer, partitions) -> None:
        logger.info("partitions_revoked", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])
        for p in partitions:
            self._read_up_to.pop((p.topic, p.partition), None)

    def _build_dlq_producer(self) -> Producer:
        return build_producer(delivery_timeout_ms=self.config.delivery_timeout_ms)

    def run(self) -> None:
        serve_process_metrics(port=self.config.metrics_port, process="bridge")
        if not ensure_topics_until_ready(stop=self.stop, max_backoff=self.config.max_backoff):
            return
        self.consumer.subscribe(
            self.config.topics, on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        logger.info("bridge_started", topics=self.config.topics, group_id=self.config.group_id)
        lag_read_at = 0.0
        try:
            while not self.stop.is_set():
                # consume() returns when the batch is full or the timeout passes: a short timeout
                # bounds what a lone event waits.
                messages = self.consumer.consume(num_messages=self.config.batch_size, timeout=self.config.poll_timeout)
                if messages:
                    self.handle_batch(messages)
                if time.monotonic() - lag_read_at > LAG_INTERVAL:
                    self._record_lag()
                    lag_read_at = time.monotonic()
        finally:
            # Leaves the group, so the partitions move to another bridge without waiting for a timeout.
            self.consumer.close()
            logger.info("bridge_stopped")

    def handle_batch(self, messages: list[Message]) -> None:
        readings = [self._read(message) for message in messages]
        try:
            recorded = recorded_payloads(event_ids={r["event_id"] for r in readings if isinstance(r, dict)})
        except DatabaseError as exc:
            # Nothing can be vouched for: commit nothing, read the batch again once the database is back.
            logger.warning("bridge_database_error", error=str(exc))
            connection.close()
            self._rewind(messages)
            self.stop.wait(DATABASE_RETRY_DELAY)
            return
        done: dict[tuple[str, int], int] = {}
        dead_letter_errors: list[KafkaError] = []
        # Events whose customer notifications go out together, once the batch is read.
        to_notify: list[dict] = []
        for message, reading in zip(messages, readings):
            if message.error():
                if message.error().code() != KafkaError._PARTITION_EOF:
                    logger.warning("kafka_consume_error", error=str(message.error()))
                continue
            position = (message.topic(), message.partition())
            if not self._handle(message, reading, recorded, dead_letter_errors, to_notify):
                break  # stopping while the Celery broker is away: leave the rest for redelivery
            done[position] = message.offset()
        structlog.contextvars.clear_contextvars()
        if to_notify and not self._dispatch(notification_tasks(to_notify)):
            return  # stopping while the Celery broker is away: nothing committed, the batch comes again
        if self.dlq_producer.flush(self.config.delivery_timeout_ms / 1000 + 5) or dead_letter_errors:
            # Not confirmed on dlq: commit nothing, read the batch again (tasks are idempotent).
            logger.error("dlq_publish_failed", errors=[str(error) for error in dead_letter_errors])
            if any(needs_new_producer(error) for error in dead_letter_errors):
                self.dlq_producer = self._build_dlq_producer()
            self._rewind(messages)
            return
        self._commit(done)

    def _read(self, message: Message) -> dict | InvalidEvent | None:
        """The message's event, or why it cannot be one; None for a dlq message or a consumer error."""
        if message.error() or message.topic() == TOPIC_DLQ:
            return None
        try:
            return parse_event(message.value(), max_bytes=self.config.max_event_bytes)
        except InvalidEvent as exc:
            return exc

    def _tasks(
        self, message: Message, reading: dict | InvalidEvent | None, recorded: dict[str, list[dict]], dead_letter_errors: list[KafkaError]
    ) -> tuple[list[Signature], dict | None] | None:
        """The message's tasks, and its event if the customer is to be told; None if it went to dlq instead."""
        if message.topic() == TOPIC_DLQ:
            return [dead_letter_task(key=message.key(), headers=message.headers() or [], value=message.value())], None
        try:
            if isinstance(reading, InvalidEvent):
                raise reading
            check_recorded(reading, recorded=recorded.get(reading["event_id"], []))
        except InvalidEvent as exc:
            self._dead_letter(message, exc, dead_letter_errors)
            BRIDGE_MESSAGES.labels(message.topic(), "dead_lettered").inc()
            return None
        structlog.contextvars.bind_contextvars(**log_context(reading), event_type=reading["type"])
        return tasks_for(reading), reading if notifies(reading) else None

    def _handle(
        self,
        message: Message,
        reading: dict | InvalidEvent | None,
        recorded: dict[str, list[dict]],
        dead_letter_errors: list[KafkaError],
        to_notify: list[dict],
    ) -> bool:
        structlog.contextvars.clear_contextvars()
        routed = self._tasks(message, reading, recorded, dead_letter_errors)
        if routed is None:
            return True
        tasks, notify = routed
        if not self._dispatch(tasks):
            return False
        if notify is not None:
            to_notify.append(notify)
        BRIDGE_MESSAGES.labels(message.topic(), "dispatched" if tasks or notify else "no_task").inc()
        logger.info(
            "event_dispatched",
            tasks=len(tasks),
            notify=notify is not None,
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
        )
        return True

    def _dispatch(self, tasks: list[Signature]) -> bool:
        """True once the Celery broker took every task; False if the bridge is stopping first."""
        for delay in backoff_delays(start=0.5, ceiling=self.config.max_backoff):
            if delay and self.stop.wait(delay):
                return False
            try:
                for task in tasks:
                    task.apply_async()
            except Exception as exc:  # kombu raises its own and the transport's errors: all mean "not accepted"
                BRIDGE_DISPATCH_FAILURES.inc()
                logger.warning("celery_dispatch_failed", error=f"{type(exc).__name__}: {exc}")
                continue
            return True
        return False

    def _dead_letter(self, message: Message, exc: InvalidEvent, errors: list[KafkaError]) -> None:
        headers = dict((name, value) for name, value in (message.headers() or []))
        headers.update(
            (name, value.encode())
            for name, value in dead_letter_headers(
                reason=exc.reason,
                error=exc.error,
                source=DLQ_SOURCE,
                topic=message.topic(),
                partition=message.partition(),
                offset=message.offset(),
            ).items()
        )

        def report(error, delivered):
            error = delivery_error(error, delivered)
            if error is not None:
                errors.append(error)

        self.dlq_producer.produce(
            TOPIC_DLQ, key=message.key(), value=message.value() or b"", headers=list(headers.items()), on_delivery=report
        )
        logger.warning(
            "event_dead_lettered",
            reason=exc.reason,
            error=exc.error,
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
        )

    def _record_lag(self) -> None:
        """Lag per partition from what the consumer already knows (positions, the end offsets the
        fetches reported); the broker is asked only for the committed offset of a partition
        nothing was read from yet, at most every COMMITTED_LOOKUP_INTERVAL seconds."""
        try:
            positions = self.consumer.position(self.consumer.assignment())
            for position in positions:
                if position.offset >= 0:
                    self._read_up_to[(position.topic, position.partition)] = position.offset
            unknown = [p for p in positions if (p.topic, p.partition) not in self._read_up_to]
            if unknown and time.monotonic() >= self._next_committed_lookup:
                self._next_committed_lookup = time.monotonic() + COMMITTED_LOOKUP_INTERVAL
                for tp in self.consumer.committed(unknown, timeout=0.5):
                    low, _high = self.consumer.get_watermark_offsets(tp, cached=True)
                    # Never committed: the group starts at the beginning of the partition.
                    start = tp.offset if tp.offset >= 0 else low
                    if start >= 0:
                        self._read_up_to[(tp.topic, tp.partition)] = start
            for position in positions:
                key = (position.topic, position.partition)
                _low, high = self.consumer.get_watermark_offsets(position, cached=True)
                if high >= 0 and key in self._read_up_to:
                    BRIDGE_LAG.labels(position.topic, str(position.partition)).set(max(0, high - self._read_up_to[key]))
        except Exception as exc:  # a metric must never stop the bridge
            logger.warning("consumer_lag_unavailable", error=str(exc))

    def _commit(self, done: dict[tuple[str, int], int]) -> None:
        if not done:
            return
        offsets = [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in done.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except Exception as exc:  # a rebalance or a broker away: the messages come again, harmlessly
            logger.warning("offset_commit_failed", error=str(exc))

    def _rewind(self, messages: list[Message]) -> None:
        first: dict[tuple[str, int], int] = {}
        for message in messages:
            if not message.error():
                first.setdefault((message.topic(), message.partition()), message.offset())
        for (topic, partition), offset in first.items():
            self.consumer.seek(TopicPartition(topic, partition, offset))
