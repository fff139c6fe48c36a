"""The bridge's commit rules, one batch at a time: ``KafkaBridge.handle_batch`` called directly on
messages its own consumer read from the bundled broker, with events written through the outbox
and tasks sent to the configured Celery broker."""

from __future__ import annotations

import contextlib
import dataclasses
import threading

import pytest
from confluent_kafka import OFFSET_INVALID
from django.test import override_settings
from prometheus_client import REGISTRY

from devtools.broker import free_port
from devtools.harness.bridge import (
    celery_broker,
    committed,
    end_offset,
    forged_message,
    order_created,
    order_processing,
    publish,
    read_batch,
    read_more,
    relayed,
    task_args,
    task_messages,
)
from devtools.harness.topics import read_topics
from devtools.harness.waiting import wait_until
from events.contract import TOPIC_DLQ
from messaging.bridge import KafkaBridge
from messaging.producer import build_producer
from messaging.routes import CHARGE_PAYMENTS, DELIVER_WEBHOOKS, PROCESS_ORDERS, SEND_NOTIFICATIONS

pytestmark = pytest.mark.django_db


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


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


# --- the commit rules ---


def test_a_good_batch_is_committed_once_the_celery_broker_took_its_tasks(kafka_broker, topic, make_bridge, own_celery):
    rows = [order_created(0), order_created(1)]
    publish(kafka_broker.bootstrap_servers, topic, [relayed(row) for row in rows])
    bridge = make_bridge()
    batch = read_batch(bridge, 2)

    bridge.handle_batch(batch)

    assert committed(bridge) == {(topic, 0): 2}
    tasks = task_messages(own_celery)
    assert [message.headers["task"] for message in tasks] == [PROCESS_ORDERS, SEND_NOTIFICATIONS, DELIVER_WEBHOOKS]
    # The batch's orders go through their chain together: processed, then charged.
    payloads = [row.payload for row in rows]
    assert task_args(tasks[0]) == [payloads]
    [charge] = tasks[0].decode()[2]["chain"]
    assert (charge["task"], charge["args"]) == (CHARGE_PAYMENTS, [payloads])
    assert task_args(tasks[1]) == [payloads]
    assert "log_event_id" not in tasks[1].headers  # a batch's tasks belong to no single event
    # One task hands the batch's webhook deliveries on (its own queue in the running system).
    assert task_args(tasks[2]) == [[str(row.event_id) for row in rows]]
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
