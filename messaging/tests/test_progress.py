"""What the reconciler reads downstream of the outbox, against a real Kafka-protocol broker and
the real Celery broker."""

from __future__ import annotations

import uuid

import kombu
import pytest
from confluent_kafka import Consumer, TopicPartition
from django.conf import settings

from devtools.broker import free_port
from devtools.harness.sample_orders import create_test_orders
from events.contract import TOPIC_ORDERS
from events.models import OutboxEvent
from messaging.progress import READ_ONLY_DECLARE, BridgeProgress, queued_tasks
from messaging.producer import build_producer
from messaging.relay import publish_pending_events
from messaging.topics import ensure_topics

pytestmark = pytest.mark.django_db


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



@pytest.mark.skipif(
    not settings.CELERY_BROKER_URL.startswith(READ_ONLY_DECLARE),
    reason="the SQL Celery broker is not asked (its declaration writes): see the test below",
)
def test_the_tasks_waiting_in_the_celery_queue_are_counted():
    name = f"progress-{uuid.uuid4().hex}"
    queue = kombu.Queue(name, exchange=kombu.Exchange(name), routing_key=name)
    broker_url = settings.CELERY_BROKER_URL
    with kombu.Connection(broker_url) as connection:
        assert queued_tasks(broker_url=broker_url, queue=queue.name, timeout=5) == 0  # not even declared yet
        producer = connection.Producer()
        for number in range(3):
            producer.publish({"n": number}, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue])
        try:
            assert queued_tasks(broker_url=broker_url, queue=queue.name, timeout=5) == 3
        finally:
            queue(connection.default_channel).delete()


def test_the_sql_celery_broker_is_not_asked_so_nothing_is_written_to_it(tmp_path):
    broker_url = f"sqla+sqlite:///{tmp_path}/broker.sqlite3"
    assert queued_tasks(broker_url=broker_url, queue="orders-pipeline", timeout=1) is None
    assert not (tmp_path / "broker.sqlite3").exists()


def test_a_celery_broker_that_does_not_answer_gives_no_count():
    assert queued_tasks(broker_url=f"redis://127.0.0.1:{free_port()}/0", queue="orders-pipeline", timeout=1) is None
