"""The Kafka bridge: a consumer-group member that hands each event to its Celery tasks.

Only events the outbox recorded, exactly as recorded, are handed on: anything else (a message
from whoever else can write to the topic, an event altered on its way) goes to the dlq topic
with its reason. Offsets are committed only after every message up to them was dealt with: its
tasks accepted by the Celery broker, or the message itself confirmed on the dlq topic. A crash
in between means redelivery, which the tasks absorb (inbox, state machine).

No single message can stop the bridge (``KafkaBridge._route`` and ``_dispatch_tasks``): whatever
fails while one message is read, parsed, checked or routed sends that message to dlq with its
reason (``unreadable`` when the Kafka client cannot decode it, ``internal_error`` for a failure
of the bridge's own code, logged with its traceback), and the bridge goes on. Only what is no
message's own stops or pauses it: Kafka, the database (the batch's outbox lookup), the Celery
broker. Its dlq copies are themselves readable: headers a reader could not take (no value, not
UTF-8) travel base64 in one header of their own.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from celery import Signature
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from django.db import DatabaseError, DataError, connection
from kombu.exceptions import EncodeError

from common.errors import describe
from common.lifecycle import backoff_delays
from common.metrics import serve_process_metrics
from events.contract import (
    TOPIC_DLQ,
    DeadLetterMessage,
    Event,
    InvalidEvent,
    check_recorded,
    dead_letter_headers,
    parse_event,
    safe_text,
    text_of,
)
from events.selectors import recorded_payloads
from messaging.kafka import Received, client_config
from messaging.metrics import BRIDGE_DISPATCH_FAILURES, BRIDGE_LAG, BRIDGE_MESSAGES
from messaging.producer import build_producer, delivery_error, needs_new_producer
from messaging.routes import (
    dead_letter_task,
    in_chunks,
    notification_tasks,
    notifies,
    order_chain,
    starts_order,
    tasks_for,
    webhook_tasks,
)
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
    # Whether it starts its order's chain, with the batch's other orders (``order_chain``).
    starts_order: bool = False
    notify: bool = False
    refusal: InvalidEvent | None = None


@dataclass
class BatchProgress:
    """How far a batch got: the last offset dealt with per partition, and the events whose
    customers are told once the batch's tasks are dispatched."""

    done: dict[tuple[str, int], int] = field(default_factory=dict)
    # The orders whose chain the batch starts, with their messages (whose traces the chains continue).
    to_start: list[tuple[Received, Event]] = field(default_factory=list)
    to_notify: list[Event] = field(default_factory=list)
    # The batch's order events, whose webhook deliveries are handed on with the notifications.
    announced: list[Event] = field(default_factory=list)
    # Their messages, whose traces the notification tasks continue.
    notified: list[Received] = field(default_factory=list)


@dataclass(frozen=True)
class DeadLetterCopy:
    """A refused message as it goes to dlq: its key and value unchanged, the original headers a
    reader can take as they were, ours (``dead_letter_headers``) after them; original headers
    without a value, with a value that is not UTF-8 text, with a name that is not plain text or
    starts like ours (``dlq_``) travel in ``dlq_original_headers_b64`` ([name, base64 value or
    null], JSON). ``record``: our headers alone, sent instead when the copy is too large for the
    dlq topic (``dlq_omitted`` says what was left out)."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    record: list[tuple[str, bytes]]

    @classmethod
    def of(cls, received: Received, refusal: InvalidEvent) -> DeadLetterCopy:
        message = received.message
        ours = dead_letter_headers(
            reason=refusal.reason,
            error=refusal.error,
            source=DLQ_SOURCE,
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
        )
        originals = received.headers
        kept, moved = [], []
        for name, raw in originals or []:
            if raw is not None and not name.startswith("dlq_") and safe_text(name) == name and not text_of(raw)[1]:
                kept.append((name, raw))
            else:
                moved.append([safe_text(name), None if raw is None else base64.b64encode(raw).decode()])
        if originals is None:
            ours["dlq_original_headers_unreadable"] = safe_text(received.unreadable)
        key, value = message.key(), message.value() or b""
        omitted = f"key of {len(key or b'')} bytes, value of {len(value)} bytes, {len(originals or [])} headers: too large for dlq"
        record = {**ours, "dlq_omitted": omitted}
        if moved:
            ours["dlq_original_headers_b64"] = json.dumps(moved)
        return cls(
            key=key,
            value=value,
            headers=kept + [(name, text.encode()) for name, text in ours.items()],
            record=[(name, text.encode()) for name, text in record.items()],
        )


class DeadLetters:
    """The dlq copies one batch sends, and the errors their deliveries reported."""

    def __init__(self, producer: Producer):
        self.producer = producer
        self.errors: list[KafkaError] = []
        # Copies the dlq topic refused as too large: their record goes instead.
        self._too_large: list[DeadLetterCopy] = []

    def send(self, received: Received, refusal: InvalidEvent) -> None:
        """Copy the message to dlq with why it was refused and where it came from."""
        self._produce(DeadLetterCopy.of(received, refusal), record=False)
        message = received.message
        logger.warning(
            "event_dead_lettered",
            reason=refusal.reason,
            error=refusal.error,
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
        )
        BRIDGE_MESSAGES.labels(message.topic(), "dead_lettered").inc()

    def _produce(self, copy: DeadLetterCopy, *, record: bool) -> None:
        def report(error: KafkaError | None, delivered: Message) -> None:
            error = delivery_error(error, delivered)
            if error is not None and not record and error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                self._too_large.append(copy)
            elif error is not None:
                self.errors.append(error)

        try:
            if record:
                self.producer.produce(TOPIC_DLQ, value=b"", headers=copy.record, on_delivery=report)
            else:
                self.producer.produce(TOPIC_DLQ, key=copy.key, value=copy.value, headers=copy.headers, on_delivery=report)
        except KafkaException as exc:  # refused before it was sent: too large for the producer, or the producer is unusable
            error = exc.args[0]
            if not record and error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                self._produce(copy, record=True)
            else:
                self.errors.append(error)
        except BufferError as exc:  # the producer's queue is full: the batch comes again
            self.errors.append(KafkaError(KafkaError._QUEUE_FULL, str(exc)))

    def confirmed(self, *, timeout: float) -> bool:
        """Whether every copy reached the dlq topic: waits up to ``timeout`` s for the deliveries."""
        deadline = time.monotonic() + timeout
        while True:
            unconfirmed = self.producer.flush(max(0.0, deadline - time.monotonic()))
            too_large, self._too_large = self._too_large, []
            if unconfirmed or not too_large:
                return unconfirmed == 0 and not self.errors and not too_large
            for copy in too_large:
                self._produce(copy, record=True)


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
        if not self._dispatch_batch_tasks(progress):
            return  # stopping while the Celery broker is away: nothing committed, the batch comes again
        if not dead_letters.confirmed(timeout=self.config.delivery_timeout_ms / 1000 + 5):
            # Not confirmed on dlq: commit nothing, read the batch again (tasks are idempotent).
            logger.error("dlq_publish_failed", errors=[str(error) for error in dead_letters.errors])
            if any(needs_new_producer(error) for error in dead_letters.errors):
                self.dlq_producer = self._build_dlq_producer()
            self._rewind(messages)
            return
        self._commit(progress.done)

    def _route(self, messages: list[Message]) -> list[tuple[Received, Routing]]:
        """Each message with its routing, its event checked against what the outbox recorded (one
        query for the batch; raises ``DatabaseError``). Consumer errors are logged and left out.

        Whatever else fails is one message's failure: that message is routed to dlq (or, read
        from dlq, archived with what can be read of it), never raised."""
        received = [Received.of(message) for message in messages]
        readings = [self._read(item) for item in received]
        recorded, unchecked = self._recorded({r.event_id for r in readings if isinstance(r, Event)})
        routed = []
        for item, reading in zip(received, readings):
            message = item.message
            if message.error():
                if message.error().code() != KafkaError._PARTITION_EOF:
                    logger.warning("kafka_consume_error", error=str(message.error()))
                continue
            if isinstance(reading, Event) and reading.event_id in unchecked:
                reading = InvalidEvent("internal_error", f"the outbox lookup failed: {unchecked[reading.event_id]}")
            try:
                routing = self._routing(item, reading, recorded)
            except Exception as exc:  # noqa: BLE001 - a bug of ours on one message must not halt the shop
                routing = self._failed(message, exc, stage="route")
            routed.append((item, routing))
        return routed

    def _read(self, received: Received) -> Event | InvalidEvent | None:
        """The message's event, or why it cannot be one; None for a dlq message or a consumer error."""
        message = received.message
        if message.error() or message.topic() == TOPIC_DLQ:
            return None
        try:
            if received.headers is None:
                # The relay's messages always have readable headers: this one is not its copy.
                return InvalidEvent("unreadable", f"the Kafka client cannot read its headers: {received.unreadable}")
            return parse_event(message.value(), max_bytes=self.config.max_event_bytes)
        except InvalidEvent as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - parse_event is total; should it fail, the message goes to dlq
            self._log_failure(message, exc, stage="parse")
            return InvalidEvent("internal_error", describe(exc))

    def _recorded(self, event_ids: set[str]) -> tuple[dict[str, list[dict]], dict[str, str]]:
        """The outbox's payloads of ``event_ids`` (``recorded_payloads``), and the ids whose lookup
        failed with why. Raises ``DatabaseError`` when the database is away; should the batch's
        query fail otherwise, each id is asked on its own, so that the failure is one event's."""
        try:
            return recorded_payloads(event_ids=event_ids), {}
        except DatabaseError as exc:
            if not isinstance(exc, DataError):
                raise
            failure = exc
        except Exception as exc:  # noqa: BLE001 - a bug of ours, or a value the database refused
            failure = exc
        logger.error("outbox_lookup_failed", error=describe(failure), exc_info=failure)
        recorded, unchecked = {}, {}
        for event_id in event_ids:
            try:
                recorded.update(recorded_payloads(event_ids={event_id}))
            except DatabaseError as exc:
                if not isinstance(exc, DataError):
                    raise
                unchecked[event_id] = describe(exc)
            except Exception as exc:  # noqa: BLE001 - as above
                unchecked[event_id] = describe(exc)
        return recorded, unchecked

    def _routing(self, received: Received, reading: Event | InvalidEvent | None, recorded: dict[str, list[dict]]) -> Routing:
        """What the message comes to, from what ``_read`` made of it and the outbox's payloads."""
        if reading is None:  # a dlq message: archived for the admin
            message = received.message
            archived = DeadLetterMessage(
                key=message.key(), headers=received.headers, value=message.value() or b"", headers_error=received.unreadable
            )
            return Routing(tasks=(dead_letter_task(archived),))
        if isinstance(reading, InvalidEvent):
            return Routing(refusal=reading)
        try:
            check_recorded(reading, recorded=recorded.get(reading.event_id, []))
        except InvalidEvent as refusal:
            return Routing(refusal=refusal)
        return Routing(
            tasks=tuple(tasks_for(reading)), event=reading, starts_order=starts_order(reading), notify=notifies(reading)
        )

    def _failed(self, message: Message, exc: Exception, *, stage: str) -> Routing:
        """The routing of a message the bridge failed on: dlq, with the failure as its reason; a
        dlq message (never sent to dlq again) is archived with its value alone."""
        self._log_failure(message, exc, stage=stage)
        if message.topic() != TOPIC_DLQ:
            return Routing(refusal=InvalidEvent("internal_error", describe(exc)))
        archived = DeadLetterMessage(
            key=None, headers=None, value=message.value() or b"", headers_error=f"the bridge failed on this message: {describe(exc)}"
        )
        return Routing(tasks=(dead_letter_task(archived),))

    def _log_failure(self, message: Message, exc: Exception, *, stage: str) -> None:
        logger.error(
            "bridge_message_failed",
            stage=stage,
            error=describe(exc),
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
            exc_info=exc,
        )

    def _dispatch_tasks(self, routed: list[tuple[Received, Routing]], dead_letters: DeadLetters) -> BatchProgress:
        """Deal with each message in order: its dlq copy sent, or its tasks taken by the Celery
        broker (with its event's ids bound, which the task messages carry)."""
        progress = BatchProgress()
        for received, routing in routed:
            message = received.message
            structlog.contextvars.clear_contextvars()
            if routing.refusal is not None:
                dead_letters.send(received, routing.refusal)
            else:
                if routing.event is not None:
                    structlog.contextvars.bind_contextvars(**routing.event.log_context(), event_type=routing.event.type)
                try:
                    with processing(received):
                        dispatched = self._dispatch(routing.tasks)
                except EncodeError as exc:  # its tasks cannot be serialized: this message's failure, not the broker's
                    structlog.contextvars.clear_contextvars()
                    self._log_failure(message, exc, stage="dispatch")
                    if message.topic() != TOPIC_DLQ:
                        dead_letters.send(received, InvalidEvent("internal_error", describe(exc)))
                    progress.done[(message.topic(), message.partition())] = message.offset()
                    continue
                if not dispatched:
                    break  # stopping while the Celery broker is away: leave the rest for redelivery
                if routing.starts_order:
                    progress.to_start.append((received, routing.event))
                if routing.notify:
                    progress.to_notify.append(routing.event)
                    progress.notified.append(received)
                if routing.event is not None:
                    progress.announced.append(routing.event)
                BRIDGE_MESSAGES.labels(message.topic(), "dispatched" if routing.tasks or routing.starts_order or routing.notify else "no_task").inc()
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

    def _dispatch_batch_tasks(self, progress: BatchProgress) -> bool:
        """The tasks a batch starts for several of its messages at once: the chains of the orders it
        creates, then the notifications and webhook deliveries of its events. False if the bridge
        is stopping before the Celery broker took them."""
        try:
            for chunk in in_chunks(progress.to_start):
                events = [event for _received, event in chunk]
                with (
                    processing_batch([received for received, _event in chunk], name="dispatch order chains"),
                    structlog.contextvars.bound_contextvars(order_ids=[str(event.order_id) for event in events]),
                ):
                    if not self._dispatch([order_chain(events)]):
                        return False
            with processing_batch(progress.notified, name="dispatch notifications"):
                follow_up = [*notification_tasks(progress.to_notify), *webhook_tasks(progress.announced)]
                return not follow_up or self._dispatch(follow_up)
        except EncodeError as exc:
            # Recorded events (parse_event made them plain JSON) always serialize; should they not,
            # the reconciler re-drives the orders and events whose tasks never ran.
            logger.error("batch_tasks_not_dispatched", error=describe(exc), exc_info=exc)
            return True

    def _dispatch(self, tasks: Sequence[Signature]) -> bool:
        """True once the Celery broker took every task; False if the bridge is stopping first."""
        for delay in backoff_delays(start=0.5, ceiling=self.config.max_backoff):
            if delay and self.stop.wait(delay):
                return False
            try:
                for task in tasks:
                    task.apply_async()
            except EncodeError:
                raise  # the tasks themselves, which no retry changes
            except Exception as exc:  # kombu raises its own and the transport's errors: all mean "not accepted"
                BRIDGE_DISPATCH_FAILURES.inc()
                logger.warning("celery_dispatch_failed", error=describe(exc))
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
