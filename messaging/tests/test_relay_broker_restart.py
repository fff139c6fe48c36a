"""The relay across a restart of a broker that keeps its data (the bundled broker on S3 storage)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from devtools.broker import EmbeddedKafkaBroker
from devtools.harness.object_store import ObjectStore
from devtools.harness.process_group import ProcessGroup
from devtools.harness.sample_orders import create_test_orders
from devtools.harness.topics import read_topics
from devtools.harness.waiting import wait_until
from events.contract import TOPIC_ORDERS
from events.models import OutboxEvent
from messaging.producer import build_producer
from messaging.relay import publish_pending_events
from messaging.topics import ensure_topics

pytestmark = pytest.mark.django_db


@pytest.fixture
def durable_broker(settings, tmp_path):
    store = ObjectStore(log_path=tmp_path / "s3.log").start()
    broker = EmbeddedKafkaBroker(
        log_path=tmp_path / "broker.log", storage_engine=f"s3://{ObjectStore.BUCKET}/", env=store.broker_env()
    ).start()
    settings.KAFKA = {**settings.KAFKA, "brokers": [broker.bootstrap_servers]}
    yield broker
    broker.stop()
    store.stop()


def test_every_row_is_on_the_broker_after_it_stopped_mid_publish(durable_broker):
    """The broker is stopped (SIGTERM) while the relay publishes orders as they come. The bundled
    broker then tends to confirm the batch in flight as a duplicate without having stored it;
    the relay must publish such rows again, so that every row marked published is on the topic."""
    ensure_topics()
    producer = build_producer(delivery_timeout_ms=30000)
    restarted = threading.Event()

    def restart_broker():
        time.sleep(2)
        durable_broker.stop()
        time.sleep(2)
        durable_broker.start()
        restarted.set()

    restarter = threading.Thread(target=restart_broker)
    restarter.start()
    deadline = None
    while deadline is None or time.monotonic() < deadline:
        create_test_orders(1, prefix="restart", price="1.00")
        publish_pending_events(producer=producer, batch_size=5, flush_timeout=35)
        if restarted.is_set() and deadline is None:
            deadline = time.monotonic() + 2
    restarter.join()
    while OutboxEvent.objects.filter(published_at__isnull=True).exists():
        assert publish_pending_events(producer=producer, batch_size=50, flush_timeout=35).failed == 0

    on_broker = {
        json.loads(message.value())["event_id"]
        for message in read_topics(bootstrap_servers=durable_broker.bootstrap_servers, topics=[TOPIC_ORDERS])
    }
    published = {str(event_id) for event_id in OutboxEvent.objects.values_list("event_id", flat=True)}
    assert len(published) > 100
    assert published - on_broker == set()
    # Shown with -s: how often the broker answered "duplicate" for a batch in this run.
    print("rows published again after a duplicate answer:", OutboxEvent.objects.filter(last_error__contains="DUPLICATE_SEQUENCE_NUMBER").count())


@pytest.mark.django_db(transaction=True)
def test_the_relay_publishes_again_after_the_broker_restarted_empty(settings, tmp_path):
    """The bundled broker's memory storage loses everything when it restarts, producer ids
    included: the relay's idempotent producer then times out on every batch without an error it
    deems fatal. The relay must notice and start a new producer."""
    broker = EmbeddedKafkaBroker(log_path=tmp_path / "broker.log").start()
    settings.KAFKA = {**settings.KAFKA, "brokers": [broker.bootstrap_servers]}
    relay = ProcessGroup.for_tests(
        kafka_brokers=broker.bootstrap_servers, work_dir=tmp_path, OUTBOX_DELIVERY_TIMEOUT_MS="2000"
    )
    relay.start("relay")
    try:
        create_test_orders(3, prefix="before", price="1.00")
        wait_until(lambda: not OutboxEvent.objects.filter(published_at__isnull=True).exists(), timeout=60)
        broker.stop()
        broker.start()
        ensure_topics()  # as run-local does after it restarted the broker

        after = create_test_orders(3, prefix="after", price="1.00")

        wait_until(
            lambda: not OutboxEvent.objects.filter(key__in=after, published_at__isnull=True).exists(),
            timeout=90,
            message="the relay never published again after the broker restarted",
        )
        on_broker = {m.key().decode() for m in read_topics(bootstrap_servers=broker.bootstrap_servers, topics=[TOPIC_ORDERS])}
    finally:
        relay.stop_all()
        broker.stop()
    assert set(after) <= on_broker
    assert any(e["event"] == "relay_producer_replaced" for e in relay.log_events("relay"))
