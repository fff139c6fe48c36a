"""What the bridge's tests share: real messages on the bundled broker, the bridge's own consumer
reading them, and Celery apps of a test's own whose queues can be read back."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import uuid

from celery import Celery
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from devtools.harness.sample_orders import create_test_order
from devtools.harness.waiting import wait_until
from events.contract import ORDER_CREATED, ORDER_PROCESSING, build_envelope, message_headers
from events.models import OutboxEvent
from events.services import enqueue_event
from messaging.bridge import KafkaBridge
from orders.selectors import order_snapshot
from orders_project.celery import app as celery_app

# Long enough for a group join on the bundled broker (10-20 s).
JOIN_TIMEOUT = 60


def relayed(row: OutboxEvent) -> dict:
    """The message the relay publishes for an outbox row."""
    row.refresh_from_db()  # the payload as stored
    return {
        "key": row.key.encode(),
        "value": json.dumps(row.payload, separators=(",", ":")).encode(),
        "headers": [(name, str(value).encode()) for name, value in row.headers.items()],
    }


def forged_message() -> dict:
    """A well-formed event this service never wrote: its id is in no outbox row."""
    order_id, event_id = str(uuid.uuid4()), uuid.uuid4()
    order = {"id": order_id, "user_id": "mallory", "email": "m@example.com", "items": [], "total_amount": "0", "status": "CREATED"}
    envelope = build_envelope(
        event_id=event_id,
        event_type=ORDER_CREATED,
        order=order,
        correlation_id="forged",
        occurred_at=dt.datetime.now(dt.timezone.utc),
        source="elsewhere",
    )
    headers = message_headers(event_type=ORDER_CREATED, event_id=str(event_id), correlation_id="forged")
    return {
        "key": order_id.encode(),
        "value": json.dumps(envelope).encode(),
        "headers": [(name, value.encode()) for name, value in headers.items()],
    }


def publish(bootstrap_servers: str, topic: str, messages: list[dict]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap_servers})
    for message in messages:
        producer.produce(topic, **message)
    assert producer.flush(10) == 0


def end_offset(bootstrap_servers: str, topic: str) -> int:
    """The offset the next message on partition 0 of ``topic`` gets."""
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": f"probe-{uuid.uuid4()}"})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
    finally:
        consumer.close()


def read_batch(bridge: KafkaBridge, count: int, *, start: dict[tuple[str, int], int] | None = None) -> list[Message]:
    """Join the bridge's group and read ``count`` messages with its consumer, partitions starting
    at ``start`` (else at the committed offset, or the beginning)."""
    start = start or {}

    def on_assign(consumer, partitions):
        for p in partitions:
            p.offset = start.get((p.topic, p.partition), p.offset)
        consumer.assign(partitions)

    bridge.consumer.subscribe(bridge.config.topics, on_assign=on_assign)
    return read_more(bridge, count, timeout=JOIN_TIMEOUT)


def read_more(bridge: KafkaBridge, count: int, *, timeout: float = 10) -> list[Message]:
    messages: list[Message] = []

    def enough() -> bool:
        messages.extend(m for m in bridge.consumer.consume(num_messages=count - len(messages), timeout=0.5) if not m.error())
        return len(messages) >= count

    wait_until(enough, timeout=timeout, interval=0, message=f"read {len(messages)} of {count} messages")
    return messages


def committed(bridge: KafkaBridge) -> dict[tuple[str, int], int]:
    """The group's committed offset of each partition the bridge reads (OFFSET_INVALID: none)."""
    return {(tp.topic, tp.partition): tp.offset for tp in bridge.consumer.committed(bridge.consumer.assignment(), timeout=10)}


@contextlib.contextmanager
def celery_broker(url: str, *, queue: str | None = None):
    """A Celery app of the test's own sending to ``url`` (into ``queue``), the current app inside
    the block: the bridge's signatures name their tasks and bind to the current app."""
    app = Celery("bridge-test", set_as_current=False)
    # The read and write URLs: a broker URL given any other way gives way to CELERY_BROKER_URL in the environment.
    app.conf.update(
        broker_read_url=url, broker_write_url=url, task_default_queue=queue or celery_app.conf.task_default_queue
    )
    app.set_current()
    try:
        yield app
    finally:
        celery_app.set_current()
        app.close()


def task_messages(app: Celery, *, queue: str | None = None) -> list:
    """The task messages waiting in ``queue`` (``app``'s default), oldest first (taken off it)."""
    messages = []
    with app.connection_for_read() as connection:
        while (message := connection.default_channel.basic_get(queue or app.conf.task_default_queue, no_ack=True)) is not None:
            messages.append(message)
    return messages


def task_args(message) -> list:
    args, _kwargs, _embed = message.decode()
    return args


def order_created(index: int) -> OutboxEvent:
    order = create_test_order(user_id=f"bridge_{index}", email="bridge@example.com", correlation_id=f"bridge-{uuid.uuid4()}")
    return OutboxEvent.objects.get(key=str(order.id), event_type=ORDER_CREATED)


def order_processing() -> OutboxEvent:
    """An event with no task of its own, only a notification."""
    order = create_test_order(user_id="bridge_p", email="bridge@example.com", correlation_id=f"bridge-{uuid.uuid4()}")
    return enqueue_event(
        event_type=ORDER_PROCESSING,
        order=order_snapshot(order=order),
        correlation_id=order.correlation_id,
        source="test",
        name="harness/ORDER_PROCESSING",
    )
