"""Relay processes (``manage.py publish_pending_events``) against a real broker and database."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from django.db import connection

from devtools.broker import EmbeddedKafkaBroker
from devtools.harness.process_group import ProcessGroup
from devtools.harness.sample_orders import create_test_orders
from devtools.harness.topics import read_topics
from devtools.harness.waiting import wait_until
from events.contract import TOPIC_ORDERS
from events.models import OutboxEvent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="concurrent relays need row locks (SKIP LOCKED); on SQLite one relay runs, as documented",
)
def test_two_relays_share_the_outbox_without_publishing_a_row_twice(tmp_path):
    broker = EmbeddedKafkaBroker(log_path=tmp_path / "broker.log").start()
    # Small batches so the two relays interleave over the same rows.
    relays = ProcessGroup.for_tests(kafka_brokers=broker.bootstrap_servers, work_dir=tmp_path, OUTBOX_BATCH_SIZE="5")
    try:
        for name in ("relay_a", "relay_b"):
            relays.start(name, command="relay")
        wait_until(
            lambda: all(any(e["event"] == "relay_started" for e in relays.log_events(n)) for n in ("relay_a", "relay_b")),
            timeout=30,
        )
        create_test_orders(300, prefix="multi")
        wait_until(lambda: not OutboxEvent.objects.filter(published_at__isnull=True).exists(), timeout=60)
    finally:
        relays.stop_all()

    published = Counter(json.loads(m.value())["event_id"] for m in read_topics(bootstrap_servers=broker.bootstrap_servers, topics=[TOPIC_ORDERS]))
    broker.stop()
    assert len(published) == 300
    assert set(published.values()) == {1}
    per_relay = {name: sum(e["event"] == "event_published" for e in relays.log_events(name)) for name in ("relay_a", "relay_b")}
    assert sum(per_relay.values()) == 300
    assert all(per_relay.values()), per_relay  # both took part
