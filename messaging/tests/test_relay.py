"""The relay and topic setup against a real Kafka-protocol broker."""

from __future__ import annotations

import json

import pytest
from confluent_kafka.admin import AdminClient

from devtools.broker import free_port
from devtools.harness.sample_orders import create_test_orders
from devtools.harness.topics import read_topics
from events.contract import TOPIC_ORDERS, TOPIC_PARTITIONS
from events.models import OutboxEvent
from messaging.producer import build_producer
from messaging.relay import produce_batch, publish_pending_events
from messaging.topics import ensure_topics

pytestmark = pytest.mark.django_db


def make_orders(count: int) -> list[str]:
    return create_test_orders(count, prefix="relay", price="2.50")


def test_topics_are_created_once_with_the_contract_partitions(kafka_settings, kafka_broker):
    ensure_topics()
    assert ensure_topics() == []  # the second run finds them all

    topics = AdminClient({"bootstrap.servers": kafka_broker.bootstrap_servers}).list_topics(timeout=10).topics
    assert {name: len(topics[name].partitions) for name in TOPIC_PARTITIONS} == TOPIC_PARTITIONS


def test_relay_publishes_pending_rows_in_batches_and_marks_them_published(kafka_settings, kafka_broker):
    ensure_topics()
    order_ids = make_orders(5)
    producer = build_producer(delivery_timeout_ms=10000)

    first = publish_pending_events(producer=producer, batch_size=3, flush_timeout=15)
    second = publish_pending_events(producer=producer, batch_size=3, flush_timeout=15)
    third = publish_pending_events(producer=producer, batch_size=3, flush_timeout=15)

    assert (first.published, second.published, third.published) == (3, 2, 0)
    assert not OutboxEvent.objects.filter(published_at__isnull=True).exists()
    on_kafka = {
        message.key().decode(): message
        for message in read_topics(bootstrap_servers=kafka_broker.bootstrap_servers, topics=[TOPIC_ORDERS])
    }
    for event in OutboxEvent.objects.all():
        message = on_kafka[event.key]
        assert json.loads(message.value()) == event.payload
        assert dict((name, value.decode()) for name, value in message.headers()) == event.headers
        assert (event.kafka_partition, event.kafka_offset) == (message.partition(), message.offset())
    assert set(order_ids) <= set(on_kafka)


def test_producing_a_batch_returns_where_kafka_put_each_row_and_records_nothing(kafka_settings, kafka_broker):
    ensure_topics()
    make_orders(3)
    events = list(OutboxEvent.objects.order_by("id"))

    deliveries = produce_batch(build_producer(delivery_timeout_ms=10000), events, flush_timeout=15)

    assert deliveries.failed == {}
    on_kafka = {
        (message.topic(), message.partition(), message.offset()): json.loads(message.value())["event_id"]
        for message in read_topics(bootstrap_servers=kafka_broker.bootstrap_servers, topics={event.topic for event in events})
    }
    where = {event.pk: on_kafka[(event.topic, *deliveries.confirmed[event.pk])] for event in events}
    assert where == {event.pk: str(event.event_id) for event in events}
    # Recording is the next step's: every row is still pending.
    assert OutboxEvent.objects.filter(published_at__isnull=True).count() == 3


def test_undelivered_rows_stay_pending_with_the_error(settings):
    settings.KAFKA = {**settings.KAFKA, "brokers": [f"127.0.0.1:{free_port()}"]}
    make_orders(2)
    producer = build_producer(delivery_timeout_ms=1000)

    result = publish_pending_events(producer=producer, batch_size=10, flush_timeout=5)

    assert (result.published, result.failed) == (0, 2)
    pending = OutboxEvent.objects.filter(published_at__isnull=True)
    assert pending.count() == 2
    assert all(event.publish_attempts == 1 and event.last_error for event in pending)
