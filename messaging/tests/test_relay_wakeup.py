"""How an idle relay learns of new outbox rows: PostgreSQL's NOTIFY, or the poll on SQLite.

The relays run as processes (``manage.py publish_pending_events``) against the test database.
"""

from __future__ import annotations

import time

import psycopg
import pytest
from django.db import connection, transaction

from devtools.harness.process_group import ProcessGroup
from devtools.harness.sample_orders import create_test_orders
from devtools.harness.waiting import wait_until
from events.models import OUTBOX_CHANNEL, OutboxEvent

pytestmark = pytest.mark.django_db(transaction=True)

postgresql_only = pytest.mark.skipif(connection.vendor != "postgresql", reason="LISTEN/NOTIFY is PostgreSQL's")

# Far longer than any bound below: a row published within such a bound was not found by the
# safety poll.
LONG_SAFETY_POLL = "60"
# How soon an idle relay publishes a new row (the Kafka round trip included).
PROMPTLY = 5.0


def start_idle_relay(tmp_path, kafka_broker, **env: str) -> ProcessGroup:
    """A relay that found the outbox empty and is waiting for rows (on PostgreSQL, listening)."""
    relay = ProcessGroup.for_tests(kafka_brokers=kafka_broker.bootstrap_servers, work_dir=tmp_path, **env)
    relay.start("relay")
    idle_event = "relay_listening" if connection.vendor == "postgresql" else "relay_started"
    wait_until(lambda: logged(relay, idle_event), timeout=60, message=f"the relay logged no {idle_event}")
    time.sleep(1)  # past the look the relay takes right after it started listening
    return relay


def logged(relay: ProcessGroup, event: str) -> int:
    return sum(line["event"] == event for line in relay.log_events("relay"))


def assert_published_promptly(order_id: str) -> None:
    wait_until(
        lambda: OutboxEvent.objects.filter(key=order_id, published_at__isnull=False).exists(),
        timeout=PROMPTLY,
        interval=0.05,
        message=f"the idle relay did not publish a new row within {PROMPTLY}s",
    )


@pytest.mark.e2e
def test_an_idle_relay_publishes_a_new_row_promptly(tmp_path, kafka_broker):
    """On PostgreSQL the commit's notification wakes the relay, as its safety poll is a minute
    away; on SQLite its poll (``poll_interval``) finds the row."""
    relay = start_idle_relay(tmp_path, kafka_broker, OUTBOX_IDLE_POLL_INTERVAL=LONG_SAFETY_POLL)
    try:
        for prefix in ("first", "second"):
            [order_id] = create_test_orders(1, prefix=prefix)
            assert_published_promptly(order_id)
            time.sleep(1)  # idle again
    finally:
        assert relay.stop("relay") == 0
    assert logged(relay, "relay_stopped") == 1


@postgresql_only
def test_a_committed_outbox_row_notifies_and_a_rolled_back_one_does_not():
    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as listener:
        listener.execute(f"LISTEN {OUTBOX_CHANNEL}")

        with pytest.raises(RuntimeError), transaction.atomic():
            create_test_orders(1, prefix="rolled-back")
            raise RuntimeError("roll back")
        assert list(listener.notifies(timeout=1)) == []

        with transaction.atomic():
            create_test_orders(3, prefix="committed")
        # One transaction, one notification however many rows it added.
        assert [n.channel for n in listener.notifies(timeout=5, stop_after=1)] == [OUTBOX_CHANNEL]
        assert list(listener.notifies(timeout=0.5)) == []


@postgresql_only
@pytest.mark.e2e
def test_the_relay_listens_again_after_its_connection_was_ended(tmp_path, kafka_broker):
    relay = start_idle_relay(tmp_path, kafka_broker, OUTBOX_IDLE_POLL_INTERVAL=LONG_SAFETY_POLL)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND query = %s",
                [f"LISTEN {OUTBOX_CHANNEL}"],
            )
            assert cursor.fetchall() == [(True,)]
        wait_until(lambda: logged(relay, "relay_listening") == 2, timeout=10, message="the relay did not listen again")
        assert logged(relay, "relay_listen_lost") == 1
        time.sleep(1)

        [order_id] = create_test_orders(1, prefix="relistened")
        assert_published_promptly(order_id)
    finally:
        relay.stop("relay")


STATISTICS_DELAY = 11.0


@postgresql_only
@pytest.mark.e2e
def test_an_idle_relay_commits_about_once_per_idle_poll_interval(tmp_path, kafka_broker):
    """Polling every ``poll_interval`` (0.05 s) cost 20 transactions a second; listening costs
    one per ``idle_poll_interval`` (1 s)."""
    relay = start_idle_relay(tmp_path, kafka_broker, OUTBOX_IDLE_POLL_INTERVAL="1.0")
    window = 5.0
    try:
        # Sessions report their counts up to 10 s late: earlier tests' commits land first.
        time.sleep(STATISTICS_DELAY)
        before = committed_transactions()
        time.sleep(window)
        per_second = (committed_transactions() - before) / window
    finally:
        relay.stop("relay")
    assert per_second < 3, per_second


def committed_transactions() -> int:
    """Transactions committed in the test database so far, all sessions (this query included)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        return cursor.fetchone()[0]
