"""Fixtures of the messaging tests: a topic and bridges (a Celery queue of a test's own: the root conftest.py)."""

from __future__ import annotations

import threading
import uuid

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from messaging.bridge import BridgeSettings, KafkaBridge
from messaging.topics import ensure_topics


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
