"""What the reconciler reads downstream of the outbox, against a real Kafka-protocol broker and
the real Celery broker."""

from __future__ import annotations

import datetime as dt
import os
import uuid

import kombu
import pytest
from confluent_kafka import Consumer, TopicPartition
from django.utils import timezone

from devtools.broker import free_port
from devtools.harness.sample_orders import create_test_orders
from events.contract import TOPIC_ORDERS
from events.models import OutboxEvent
from devtools.harness.bridge import celery_broker, task_messages
from devtools.harness.waiting import wait_until
from messaging.progress import BridgeProgress, CeleryQueues
from messaging.producer import build_producer
from messaging.relay import publish_pending_events
from messaging.topics import ensure_topics

pytestmark = pytest.mark.django_db

# The machine's RabbitMQ (.ci/services.sh starts it): the third kind of Celery broker.
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


def test_the_bridges_progress_is_its_groups_committed_offsets(kafka_settings, kafka_broker):
    ensure_topics()
    create_test_orders(4, prefix="progress", price="2.50")
    publish_pending_events(producer=build_producer(delivery_timeout_ms=10000), batch_size=10, flush_timeout=15)
    group = f"bridge-{uuid.uuid4().hex}"
    progress = BridgeProgress(group_id=group, topics=[TOPIC_ORDERS], timeout=10)
    try:
        assert progress.committed_offsets() == {}  # the group has read nothing yet

        # A member of the group reads and commits the events of the first order's partition.
        first = OutboxEvent.objects.order_by("id").first()
        reader = Consumer({"bootstrap.servers": kafka_broker.bootstrap_servers, "group.id": group, "enable.auto.commit": False})
        reader.commit(offsets=[TopicPartition(TOPIC_ORDERS, first.kafka_partition, first.kafka_offset + 1)], asynchronous=False)
        reader.close()

        assert progress.committed_offsets() == {(TOPIC_ORDERS, first.kafka_partition): first.kafka_offset + 1}
    finally:
        progress.close()


def test_a_kafka_that_does_not_answer_gives_no_offsets(settings):
    settings.KAFKA = {**settings.KAFKA, "brokers": [f"127.0.0.1:{free_port()}"]}
    progress = BridgeProgress(group_id="bridge", topics=[TOPIC_ORDERS], timeout=1)
    try:
        assert progress.committed_offsets() is None
    finally:
        progress.close()


def send_tasks(app, *, count: int) -> None:
    for number in range(count):
        app.send_task("progress.noop", args=(number,))


def test_the_tasks_waiting_in_a_celery_queue_and_the_oldest_ones_wait_are_read(own_celery):
    queue = own_celery.conf.task_default_queue
    queues = CeleryQueues(broker_url=own_celery.conf.broker_write_url, timeout=5)
    try:
        sent = timezone.now()
        send_tasks(own_celery, count=3)
        later = sent + dt.timedelta(seconds=30)
        state = queues.read(queue=queue, now=later)
        assert state.depth == 3
        assert 29 <= state.oldest_age <= 31  # kombu's SQL rows keep whole microseconds, the header a float
        if own_celery.conf.broker_write_url.startswith("redis://"):
            assert state.broker_started_at < sent  # the test's Redis ran before the test

        assert len(task_messages(own_celery)) == 3
        empty = queues.read(queue=queue, now=timezone.now())
        assert (empty.depth, empty.oldest_age) == (0, None)
    finally:
        queues.close()


def test_the_sql_broker_is_read_without_writing_a_byte(tmp_path):
    path = tmp_path / "broker.sqlite3"
    broker_url = f"sqla+sqlite:///{path}"
    queues = CeleryQueues(broker_url=broker_url, timeout=1)
    try:
        assert queues.read(queue="orders-pipeline", now=timezone.now()).depth is None  # no broker file yet
        assert not path.exists()

        with celery_broker(broker_url, queue="orders-pipeline") as app:
            send_tasks(app, count=2)
        path.chmod(0o444)  # a reader that wrote would fail
        before = path.read_bytes()
        assert queues.read(queue="orders-pipeline", now=timezone.now()).depth == 2
        assert queues.read(queue="another-queue", now=timezone.now()).depth == 0
        assert path.read_bytes() == before
    finally:
        queues.close()


def test_a_rabbitmq_queue_is_counted_and_a_missing_one_is_empty():
    name = f"progress-{uuid.uuid4().hex}"
    queue = kombu.Queue(name, exchange=kombu.Exchange(name), routing_key=name)
    queues = CeleryQueues(broker_url=RABBITMQ_URL, timeout=5)
    assert queues.read(queue=name, now=timezone.now()).depth == 0
    with kombu.Connection(RABBITMQ_URL) as connection:
        producer = connection.Producer()
        for number in range(3):
            producer.publish({"n": number}, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue])
        try:
            # Published without confirms: the broker counts them once it has them.
            def all_three_counted():
                state = queues.read(queue=name, now=timezone.now())
                return state if state.depth == 3 else None

            state = wait_until(all_three_counted, timeout=10)
            assert (state.oldest_age, state.broker_started_at) == (None, None)
        finally:
            queue(connection.default_channel).delete()


@pytest.mark.parametrize("broker_url", [f"redis://127.0.0.1:{free_port()}/0", f"amqp://guest:guest@127.0.0.1:{free_port()}//"])
def test_a_celery_broker_that_does_not_answer_gives_no_reading(broker_url):
    assert CeleryQueues(broker_url=broker_url, timeout=1).read(queue="orders-pipeline", now=timezone.now()).depth is None
