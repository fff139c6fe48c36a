"""The bridge's commit rules, one batch at a time: ``KafkaBridge.handle_batch`` called directly on
messages its own consumer read from the bundled broker, with events written through the outbox
and tasks sent to the configured Celery broker."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import threading
import uuid

import pytest
from celery import Celery
from confluent_kafka import OFFSET_INVALID, Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from django.test import override_settings
from prometheus_client import REGISTRY

from devtools.broker import free_port
from devtools.harness.process_group import celery_broker_url
from devtools.harness.sample_orders import create_test_order
from devtools.harness.topics import read_topics
from devtools.harness.waiting import wait_until
from events.contract import ORDER_CREATED, ORDER_PROCESSING, TOPIC_DLQ, build_envelope, message_headers
from events.models import OutboxEvent
from events.services import enqueue_event
from messaging.bridge import BridgeSettings, KafkaBridge
from messaging.producer import build_producer
from messaging.routes import PROCESS_ORDER, SEND_NOTIFICATIONS
from messaging.topics import ensure_topics
from orders.selectors import order_snapshot
from orders_project.celery import app as celery_app

pytestmark = pytest.mark.django_db

# Long enough for a group join on the bundled broker (10-20 s).
JOIN_TIMEOUT = 60


# --- Kafka: a topic of the test's own, real messages, the bridge's own consumer ---


@pytest.fixture
def topic(kafka_settings, kafka_broker) -> str:
    """A new one-partition topic; the contract's topics (dlq) exist too."""
    ensure_topics()
    name = f"bridge-test-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap_servers})
    admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])[name].result(timeout=10)
    return name


@pytest.fixture
def make_bridge(topic):
    """Bridges reading ``topic`` (and whatever else they are given) in a group of their own."""
    bridges = []

    def make(*, topics: list[str] | None = None) -> KafkaBridge:
        config = BridgeSettings(
            topics=topics or [topic],
            group_id=f"bridge-test-{uuid.uuid4().hex[:8]}",
            batch_size=50,
            poll_timeout=0.5,
            fetch_wait_ms=50,
            max_event_bytes=1048576,
            max_backoff=1.0,
            delivery_timeout_ms=10000,
            metrics_port=0,
        )
        bridges.append(KafkaBridge(config=config, stop=threading.Event()))
        return bridges[-1]

    yield make
    for bridge in bridges:
        bridge.consumer.close()


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


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- Celery: the configured broker with a queue of the test's own, or a broker that is away ---


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


@pytest.fixture
def own_celery(tmp_path):
    """A Celery app with a queue of this test's own on the configured Celery broker (the SQL one in
    a new file)."""
    queue = f"bridge-test-{uuid.uuid4().hex[:8]}"
    with celery_broker(celery_broker_url(work_dir=tmp_path), queue=queue) as app:
        yield app
        # Declared on this channel, so that deleting it drops its bindings too.
        with app.connection_for_write() as connection:
            declared = app.amqp.queues[queue](connection.default_channel)
            declared.declare()
            declared.delete()


def task_messages(app: Celery) -> list:
    """The task messages waiting in ``app``'s queue, oldest first (taken off it)."""
    messages = []
    with app.connection_for_read() as connection:
        while (message := connection.default_channel.basic_get(app.conf.task_default_queue, no_ack=True)) is not None:
            messages.append(message)
    return messages


def task_args(message) -> list:
    args, _kwargs, _embed = message.decode()
    return args


@contextlib.contextmanager
def stopped_after_first_dispatch_failure(stop: threading.Event):
    """Sets ``stop`` from another thread once the bridge reports a refused dispatch, as SIGTERM would."""
    before = counter("bridge_dispatch_failures_total")
    finished = threading.Event()

    def watch():
        try:
            wait_until(lambda: counter("bridge_dispatch_failures_total") > before or finished.is_set(), timeout=60)
        finally:
            stop.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        finished.set()
        watcher.join()
    assert counter("bridge_dispatch_failures_total") > before, "no dispatch was refused"


class CommitWatch:
    """The bridge's consumer, noting at each commit how many dlq deliveries were unconfirmed."""

    def __init__(self, bridge: KafkaBridge):
        self._bridge = bridge
        self._consumer = bridge.consumer
        self.unconfirmed_at_commit: list[int] = []

    def commit(self, *args, **kwargs):
        self.unconfirmed_at_commit.append(len(self._bridge.dlq_producer))
        return self._consumer.commit(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._consumer, name)


def order_created(index: int) -> OutboxEvent:
    order = create_test_order(user_id=f"bridge_{index}", email="bridge@example.com", correlation_id=f"bridge-{uuid.uuid4()}")
    return OutboxEvent.objects.get(key=str(order.id), event_type=ORDER_CREATED)


def order_processing() -> OutboxEvent:
    """An event with no task of its own, only a notification."""
    order = create_test_order(user_id="bridge_p", email="bridge@example.com", correlation_id=f"bridge-{uuid.uuid4()}")
    return enqueue_event(
        event_type=ORDER_PROCESSING, order=order_snapshot(order=order), correlation_id=order.correlation_id, source="test"
    )


# --- the commit rules ---


def test_a_good_batch_is_committed_once_the_celery_broker_took_its_tasks(kafka_broker, topic, make_bridge, own_celery):
    rows = [order_created(0), order_created(1)]
    publish(kafka_broker.bootstrap_servers, topic, [relayed(row) for row in rows])
    bridge = make_bridge()
    batch = read_batch(bridge, 2)

    bridge.handle_batch(batch)

    assert committed(bridge) == {(topic, 0): 2}
    tasks = task_messages(own_celery)
    assert [message.headers["task"] for message in tasks] == [PROCESS_ORDER, PROCESS_ORDER, SEND_NOTIFICATIONS]
    for message, row in zip(tasks, rows):
        assert task_args(message) == [row.payload]
        # The event's ids travel with its tasks, for the worker's log lines.
        assert (message.headers["log_event_id"], message.headers["log_order_id"]) == (str(row.event_id), row.key)
    assert task_args(tasks[2]) == [[row.payload for row in rows]]
    assert "log_event_id" not in tasks[2].headers  # a batch's notifications belong to no single event
    assert counter("bridge_messages_total", topic=topic, outcome="dispatched") == 2


@pytest.mark.parametrize("refused", ["event_tasks", "dlq_archive", "notifications"])
def test_nothing_is_committed_when_the_celery_broker_refuses_until_the_bridge_stops(kafka_broker, topic, make_bridge, refused):
    """The bridge keeps retrying a refused dispatch until it is stopped; what it refused is the
    event's own tasks, the archive task of a dlq message (no notification follows it), or the
    batch's notifications (the event has no task of its own)."""
    bootstrap = kafka_broker.bootstrap_servers
    if refused == "dlq_archive":
        start = {(TOPIC_DLQ, 0): end_offset(bootstrap, TOPIC_DLQ)}
        publish(bootstrap, TOPIC_DLQ, [forged_message()])
        bridge = make_bridge(topics=[topic, TOPIC_DLQ])
    else:
        start = {}
        publish(bootstrap, topic, [relayed(order_created(0) if refused == "event_tasks" else order_processing())])
        bridge = make_bridge()
    batch = read_batch(bridge, 1, start=start)

    with celery_broker(f"redis://127.0.0.1:{free_port()}/0"), stopped_after_first_dispatch_failure(bridge.stop):
        bridge.handle_batch(batch)

    assert set(committed(bridge).values()) == {OFFSET_INVALID}


@pytest.mark.parametrize("failure", ["delivery_failed", "unconfirmed_at_flush"])
def test_nothing_is_committed_and_the_batch_is_read_again_when_a_dlq_copy_is_not_confirmed(
    kafka_broker, kafka_settings, topic, make_bridge, own_celery, failure
):
    """A batch of a good event and a forged one, whose dlq copy cannot reach the dlq topic: the
    bridge's dlq producer knows only an address where nothing listens."""
    publish(kafka_broker.bootstrap_servers, topic, [relayed(order_created(0)), forged_message()])
    bridge = make_bridge()
    batch = read_batch(bridge, 2)
    if failure == "delivery_failed":
        # The delivery times out, an error reported well within the bridge's wait for it.
        producer_timeout_ms, bridge.config = 1000, dataclasses.replace(bridge.config, delivery_timeout_ms=1000)
    else:
        # The bridge's wait (5 s) ends while the delivery is still being tried.
        producer_timeout_ms, bridge.config = 60000, dataclasses.replace(bridge.config, delivery_timeout_ms=0)
    with override_settings(KAFKA={**kafka_settings, "brokers": [f"127.0.0.1:{free_port()}"]}):
        bridge.dlq_producer = unreachable = build_producer(delivery_timeout_ms=producer_timeout_ms)
    try:
        bridge.handle_batch(batch)
    finally:
        unreachable.purge()
        unreachable.flush(1)

    assert set(committed(bridge).values()) == {OFFSET_INVALID}
    # Rewound: the next read starts again at the batch's first message.
    assert [message.offset() for message in read_more(bridge, 2)] == [message.offset() for message in batch]


def test_a_forged_event_goes_to_dlq_and_is_committed_once_its_copy_is_confirmed(kafka_broker, topic, make_bridge, own_celery):
    forged = forged_message()
    publish(kafka_broker.bootstrap_servers, topic, [forged])
    bridge = make_bridge()
    batch = read_batch(bridge, 1)
    bridge.consumer = watch = CommitWatch(bridge)
    try:
        bridge.handle_batch(batch)
    finally:
        bridge.consumer = watch._consumer

    assert committed(bridge) == {(topic, 0): 1}
    assert watch.unconfirmed_at_commit == [0]
    [copy] = [
        message
        for message in read_topics(bootstrap_servers=kafka_broker.bootstrap_servers, topics=[TOPIC_DLQ])
        if ("dlq_original_topic", topic.encode()) in (message.headers() or [])
    ]
    assert (copy.key(), copy.value()) == (forged["key"], forged["value"])
    headers = {name: value.decode() for name, value in copy.headers()}
    assert headers["dlq_reason"] == "unknown_event"
    assert (headers["dlq_source"], headers["dlq_original_partition"], headers["dlq_original_offset"]) == (
        "kafka-bridge",
        "0",
        "0",
    )
    assert {name: value.decode() for name, value in forged["headers"]}.items() <= headers.items()
    assert task_messages(own_celery) == []  # nothing acted on
    assert counter("bridge_messages_total", topic=topic, outcome="dead_lettered") == 1
