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
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from celery import Signature
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from django.db import DatabaseError, connection

from common.lifecycle import backoff_delays
from common.metrics import serve_process_metrics
from events.contract import TOPIC_DLQ, Event, InvalidEvent, check_recorded, dead_letter_headers, parse_event
from events.selectors import recorded_payloads
from messaging.kafka import client_config
from messaging.metrics import BRIDGE_DISPATCH_FAILURES, BRIDGE_LAG, BRIDGE_MESSAGES
from messaging.producer import build_producer, delivery_error, needs_new_producer
from messaging.routes import dead_letter_task, notification_tasks, notifies, tasks_for
from messaging.topics import ensure_topics_until_ready
from messaging.tracing import processing, processing_batch

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


@dataclass(frozen=True)
class Routing:
    """What one message comes to: the tasks that take it on and whether its customer is told, or
    why it goes to dlq instead."""

    tasks: tuple[Signature, ...] = ()
    # The event as the outbox recorded it; None for a dlq message or a refused one.
    event: Event | None = None
    notify: bool = False
    refusal: InvalidEvent | None = None


@dataclass
class BatchProgress:
    """How far a batch got: the last offset dealt with per partition, and the events whose
    customers are told once the batch's tasks are dispatched."""

    done: dict[tuple[str, int], int] = field(default_factory=dict)
    to_notify: list[Event] = field(default_factory=list)
    # Their messages, whose traces the notification tasks continue.
    notified: list[Message] = field(default_factory=list)


class DeadLetters:
    """The dlq copies one batch sends, and the errors their deliveries reported."""

    def __init__(self, producer: Producer):
        self.producer = producer
        self.errors: list[KafkaError] = []

    def send(self, message: Message, refusal: InvalidEvent) -> None:
        """Copy ``message`` to dlq with why it was refused and where it came from."""
        headers = dict(message.headers() or [])
        headers.update(
            (name, value.encode())
            for name, value in dead_letter_headers(
                reason=refusal.reason,
                error=refusal.error,
                source=DLQ_SOURCE,
                topic=message.topic(),
                partition=message.partition(),
                offset=message.offset(),
            ).items()
        )
        self.producer.produce(
            TOPIC_DLQ, key=message.key(), value=message.value() or b"", headers=list(headers.items()), on_delivery=self._report
        )
        logger.warning(
            "event_dead_lettered",
            reason=refusal.reason,
            error=refusal.error,
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
        )
        BRIDGE_MESSAGES.labels(message.topic(), "dead_lettered").inc()

    def _report(self, error: KafkaError | None, delivered: Message) -> None:
        error = delivery_error(error, delivered)
        if error is not None:
            self.errors.append(error)

    def confirmed(self, *, timeout: float) -> bool:
        """Whether every copy reached the dlq topic: waits up to ``timeout`` s for the deliveries."""
        return self.producer.flush(timeout) == 0 and not self.errors


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

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        logger.info("partitions_assigned", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])
        self._next_committed_lookup = 0.0

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
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
        """Verify the batch against the outbox and route it, dispatch its tasks, then its
        notifications; commit its offsets once its dlq copies are confirmed, else rewind."""
        try:
            routed = self._route(messages)
        except DatabaseError as exc:
            # Nothing can be vouched for: commit nothing, read the batch again once the database is back.
            logger.warning("bridge_database_error", error=str(exc))
            connection.close()
            self._rewind(messages)
            self.stop.wait(DATABASE_RETRY_DELAY)
            return
        dead_letters = DeadLetters(self.dlq_producer)
        progress = self._dispatch_tasks(routed, dead_letters)
        with processing_batch(progress.notified, name="dispatch notifications"):
            dispatched = not progress.to_notify or self._dispatch(notification_tasks(progress.to_notify))
        if not dispatched:
            return  # stopping while the Celery broker is away: nothing committed, the batch comes again
        if not dead_letters.confirmed(timeout=self.config.delivery_timeout_ms / 1000 + 5):
            # Not confirmed on dlq: commit nothing, read the batch again (tasks are idempotent).
            logger.error("dlq_publish_failed", errors=[str(error) for error in dead_letters.errors])
            if any(needs_new_producer(error) for error in dead_letters.errors):
                self.dlq_producer = self._build_dlq_producer()
            self._rewind(messages)
            return
        self._commit(progress.done)

    def _route(self, messages: list[Message]) -> list[tuple[Message, Routing]]:
        """Each message with its routing, its event checked against what the outbox recorded (one
        query for the batch; raises ``DatabaseError``). Consumer errors are logged and left out."""
        readings = [self._read(message) for message in messages]
        recorded = recorded_payloads(event_ids={r.event_id for r in readings if isinstance(r, Event)})
        routed = []
        for message, reading in zip(messages, readings):
            if message.error():
                if message.error().code() != KafkaError._PARTITION_EOF:
                    logger.warning("kafka_consume_error", error=str(message.error()))
                continue
            routed.append((message, self._routing(message, reading, recorded)))
        return routed

    def _read(self, message: Message) -> Event | InvalidEvent | None:
        """The message's event, or why it cannot be one; None for a dlq message or a consumer error."""
        if message.error() or message.topic() == TOPIC_DLQ:
            return None
        try:
            return parse_event(message.value(), max_bytes=self.config.max_event_bytes)
        except InvalidEvent as exc:
            return exc

    def _routing(self, message: Message, reading: Event | InvalidEvent | None, recorded: dict[str, list[dict]]) -> Routing:
        """What ``message`` comes to, from what ``_read`` made of it and the outbox's payloads."""
        if reading is None:  # a dlq message: archived for the admin
            return Routing(tasks=(dead_letter_task(key=message.key(), headers=message.headers() or [], value=message.value()),))
        if isinstance(reading, InvalidEvent):
            return Routing(refusal=reading)
        try:
            check_recorded(reading, recorded=recorded.get(reading.event_id, []))
        except InvalidEvent as refusal:
            return Routing(refusal=refusal)
        return Routing(tasks=tuple(tasks_for(reading)), event=reading, notify=notifies(reading))

    def _dispatch_tasks(self, routed: list[tuple[Message, Routing]], dead_letters: DeadLetters) -> BatchProgress:
        """Deal with each message in order: its dlq copy sent, or its tasks taken by the Celery
        broker (with its event's ids bound, which the task messages carry)."""
        progress = BatchProgress()
        for message, routing in routed:
            structlog.contextvars.clear_contextvars()
            if routing.refusal is not None:
                dead_letters.send(message, routing.refusal)
            else:
                if routing.event is not None:
                    structlog.contextvars.bind_contextvars(**routing.event.log_context(), event_type=routing.event.type)
                with processing(message):
                    dispatched = self._dispatch(routing.tasks)
                if not dispatched:
                    break  # stopping while the Celery broker is away: leave the rest for redelivery
                if routing.notify:
                    progress.to_notify.append(routing.event)
                    progress.notified.append(message)
                BRIDGE_MESSAGES.labels(message.topic(), "dispatched" if routing.tasks or routing.notify else "no_task").inc()
                logger.info(
                    "event_dispatched",
                    tasks=len(routing.tasks),
                    notify=routing.notify,
                    topic=message.topic(),
                    partition=message.partition(),
                    offset=message.offset(),
                )
            progress.done[(message.topic(), message.partition())] = message.offset()
        structlog.contextvars.clear_contextvars()
        return progress

    def _dispatch(self, tasks: Sequence[Signature]) -> bool:
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
