"""The fault suite: real failures while orders are being posted, and what the pipeline keeps.

Runs web (gunicorn), relay, bridge and a Celery worker as processes on PostgreSQL and Redis,
with a Kafka-protocol broker that keeps its data in a local S3 store (so it can be stopped and
started again like a real Kafka broker). Each test posts orders at a steady rate from a
client that re-sends with its Idempotency-Key on errors, injects one fault, recovers, and then
audits every order that got a 201: it reached a terminal state, was charged at most once,
got each notification once, and its timeline shows each status once. The results are printed
as a table at the end of the run (see conftest.py) and recorded in docs/reliability.md.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections import Counter

import pytest
from confluent_kafka import Producer
from django.db import connection
from django.db.models import Count, Sum

from conftest import FAULT_REPORT
from events.contract import TOPIC_ORDERS
from events.embedded_broker import EmbeddedKafkaBroker, free_port
from events.models import DeadLetter, InboxEntry, OutboxEvent
from notifications.models import Notification
from orders.models import Order, OrderStatus
from orders_project.testing import ObjectStore, OrderLoad, ProcessGroup, wait_until
from payments.gateway import SimulatedGateway
from payments.models import Payment, SimulatedCharge

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e, pytest.mark.fault]

RATE = 8  # orders per second while a fault happens
PAYMENT_SEED = "fault-suite-seed"
MAX_EVENT_BYTES = 65536
TERMINAL = {OrderStatus.PAID, OrderStatus.PAYMENT_FAILED}
GATEWAY = SimulatedGateway(success_rate=0.85, timeout_rate=0.0, seed=PAYMENT_SEED)


@pytest.fixture(scope="module")
def object_store(tmp_path_factory):
    store = ObjectStore(log_path=tmp_path_factory.mktemp("s3") / "moto.log").start()
    yield store
    store.stop()


@pytest.fixture(scope="module")
def kafka(object_store, tmp_path_factory):
    broker = EmbeddedKafkaBroker(
        log_path=tmp_path_factory.mktemp("kafka") / "broker.log",
        storage_engine=f"s3://{ObjectStore.BUCKET}/",
        env=object_store.broker_env(),
    ).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def system(django_db_setup, django_db_blocker, kafka, tmp_path_factory):
    port = free_port()
    group = ProcessGroup.for_tests(
        kafka_brokers=kafka.bootstrap_servers,
        work_dir=tmp_path_factory.mktemp("faults"),
        HTTP_PORT=str(port),
        HTTP_WORKERS="2",
        PAYMENTS_SEED=PAYMENT_SEED,
        # A charge takes a while, so a worker can be killed in the middle of one.
        PAYMENTS_LATENCY_MS="150",
        # A killed worker's tasks come back after 10 s (production: 60), retries wait at most 4 s.
        CELERY_VISIBILITY_TIMEOUT="10",
        CELERY_RETRY_BACKOFF_MAX="4.0",
        CELERY_MAX_RETRIES="15",
        API_THROTTLE_ANON="",
        BRIDGE_MAX_EVENT_BYTES=str(MAX_EVENT_BYTES),
        OUTBOX_BATCH_SIZE="20",
    )
    with django_db_blocker.unblock():
        group.start_system(port=port)
        group.kafka = kafka
        yield group
        group.stop_all()


def _assigned(system, name: str, count: int = 1) -> bool:
    """The last assignment logged by bridge ``name`` has at least ``count`` partitions."""
    assignments = [e for e in system.log_events(name) if e["event"] in ("partitions_assigned", "partitions_revoked")]
    return bool(assignments) and assignments[-1]["event"] == "partitions_assigned" and len(assignments[-1]["partitions"]) >= count


def order_body(index: int) -> dict:
    return {
        "user_id": f"fault_user_{index % 7}",
        "email": f"fault{index % 7}@example.com",
        "items": [
            {"product_id": "prod_001", "product_name": "Premium Widget", "quantity": 1 + index % 3, "price": "29.99"},
            {"product_id": "prod_002", "product_name": "Standard Widget", "quantity": 1, "price": "15.99"},
        ],
    }


def email_sends(system) -> Counter:
    """Emails the workers really sent (the console backend prints each), by Message-ID."""
    sends = Counter()
    for log in system.log_dir.glob("worker*.log"):
        sends.update(re.findall(r"Message-ID: <([0-9a-f-]{36}\.email)@", log.read_text(errors="replace")))
    return sends


def audit(system, order_ids: list[str]) -> dict:
    """What happened to the orders that got a 201."""
    orders = {str(o.id): o for o in Order.objects.filter(pk__in=order_ids)}
    missing = [order_id for order_id in order_ids if order_id not in orders]
    unfinished = [o for o in orders.values() if o.status not in TERMINAL]
    wrong_outcome = [
        o
        for o in orders.values()
        if o.status in TERMINAL
        and o.status != (OrderStatus.PAID if GATEWAY.would_approve(idempotency_key=f"{o.id}:1") else OrderStatus.PAYMENT_FAILED)
    ]
    notified = dict(
        Notification.objects.filter(order_id__in=order_ids, status="SENT")
        .values_list("order_id")
        .annotate(n=Count("id"))
    )
    unnotified = [o for o in orders.values() if notified.get(o.id, 0) < 3]
    charges = Counter()
    for key in SimulatedCharge.objects.filter(approved=True).values_list("idempotency_key", flat=True):
        charges[key.split(":")[0]] += 1
    double_charged = [order_id for order_id in order_ids if charges[order_id] > 1]
    double_approved = Payment.objects.filter(order_id__in=order_ids, status="APPROVED").values("order_id").annotate(
        n=Count("id")
    ).filter(n__gt=1).count()
    repeated_steps = 0
    for order in orders.values():
        steps = list(order.timeline.exclude(event_type__in=("NOTIFICATION_SENT", "REDRIVEN")).values_list("status", flat=True))
        repeated_steps += len(steps) - len(set(steps))
    sent = email_sends(system)
    order_events = {
        str(event_id)
        for event_id in Notification.objects.filter(order_id__in=order_ids).values_list("source_event_id", flat=True)
    }
    resent = sum(count - 1 for message, count in sent.items() if count > 1 and message.split(".")[0] in order_events)
    return {
        "missing": missing,
        "unfinished": unfinished,
        "unnotified": unnotified,
        "wrong_outcome": wrong_outcome,
        "lost": len(missing) + len({o.id for o in unfinished} | {o.id for o in unnotified}),
        "duplicates": len(double_charged) + double_approved + repeated_steps + resent,
        "completed": sum(1 for o in orders.values() if o.status in TERMINAL),
    }


def redeliveries() -> int:
    return InboxEntry.objects.aggregate(n=Sum("redeliveries"))["n"] or 0


def run_fault(system, name: str, inject, *, before: float = 3.0, after: float = 3.0) -> dict:
    """Post orders, inject the fault (``inject`` returns when its recovery action is done), keep
    posting a little, then wait for every accepted order to finish and audit them."""
    redelivered_before = redeliveries()
    load = OrderLoad(base_url=system.base_url, rate=RATE, body=order_body).start()
    time.sleep(before)
    inject(load)
    recovered_at = time.monotonic()
    time.sleep(after)
    load.stop()
    connection.close()  # the test's own connection may predate a database restart

    def finished():
        result = audit(system, load.accepted)
        return result if not result["unfinished"] and not result["unnotified"] and not result["missing"] else None

    try:
        wait_until(finished, timeout=180, interval=1.0)
    except TimeoutError:
        pass  # reported below as lost
    recover_s = round(time.monotonic() - recovered_at, 1)
    result = audit(system, load.accepted)
    row = {
        "fault": name,
        "posted": len(load.accepted) + len(load.unaccepted),
        "completed": result["completed"],
        "duplicates": result["duplicates"],
        "lost": result["lost"] + len(load.unaccepted),
        "recover_s": recover_s,
        "redeliveries": redeliveries() - redelivered_before,
        # Gateway calls repeated for one payment attempt (a worker died or timed out mid-charge).
        "replayed_charges": SimulatedCharge.objects.filter(
            calls__gt=1, idempotency_key__in=[f"{order_id}:1" for order_id in load.accepted]
        ).count(),
        "retried_posts": load.failed_attempts,
    }
    FAULT_REPORT.append(row)
    assert not load.unaccepted, f"orders the API never accepted: {len(load.unaccepted)}"
    assert result["lost"] == 0, {key: result[key][:5] for key in ("missing", "unfinished", "unnotified")}
    assert result["duplicates"] == 0, row
    assert not result["wrong_outcome"], [str(o.id) for o in result["wrong_outcome"][:5]]
    assert row["posted"] >= RATE * (before + after) * 0.5, row
    return row


def log_events(system, name: str, event: str) -> list[dict]:
    return [e for e in system.log_events(name) if e.get("event") == event]


def test_relay_killed_mid_batch_and_restarted(system):
    def inject(load):
        system.signal("relay", signal.SIGSTOP)  # a backlog builds while it is frozen
        time.sleep(3)
        system.signal("relay", signal.SIGCONT)
        time.sleep(0.05)  # now it is working through that backlog
        system.kill("relay")
        assert OutboxEvent.objects.filter(published_at__isnull=True).exists()
        time.sleep(1)
        system.start("relay")

    run_fault(system, "relay SIGKILL mid-batch", inject)
    assert len(log_events(system, "relay", "relay_started")) >= 2


def test_bridge_killed_while_a_second_bridge_takes_over_its_partitions(system):
    def inject(load):
        system.start("bridge_b", command="bridge")
        wait_until(lambda: _assigned(system, "bridge_b"), timeout=60, message="second bridge got no partitions")
        system.kill("bridge")
        # After the session timeout the group gives the dead bridge's partitions to bridge_b.
        wait_until(lambda: _assigned(system, "bridge_b", count=10), timeout=60, message="no takeover")
        system.start("bridge")

    try:
        run_fault(system, "bridge SIGKILL, second bridge takes over", inject, after=5.0)
    finally:
        system.stop("bridge_b")
    wait_until(lambda: _assigned(system, "bridge", count=10), timeout=60, message="bridge did not get its partitions back")


def test_worker_killed_during_a_payment_and_another_started(system):
    def inject(load):
        # A charge is under way when its attempt is open (PENDING): the gateway takes 150 ms.
        wait_until(
            lambda: Payment.objects.filter(status="PENDING", order_id__in=load.accepted).exists(),
            timeout=30,
            interval=0.01,
            message="no payment in flight",
        )
        system.kill("worker")
        system.start("worker_b", command="worker")

    try:
        run_fault(system, "worker SIGKILL during a payment", inject)
    finally:
        system.stop("worker_b")
        system.start("worker")
    assert any("Task payments.charge_payment" in line for line in system.log("worker_b").splitlines())


def test_kafka_broker_stopped_and_started_while_the_api_keeps_taking_orders(system):
    def inject(load):
        failed_before, accepted_before = load.failed_attempts, len(load.accepted)
        system.kafka.stop()
        time.sleep(8)
        # The API took orders all along: they waited in the outbox.
        assert load.failed_attempts == failed_before
        assert len(load.accepted) > accepted_before
        system.kafka.start()

    run_fault(system, "Kafka broker down 8 s", inject)
    # The relay's Kafka client said it lost the broker (the outage was shorter than the delivery
    # timeout, so its messages waited in the producer and went out on reconnect).
    assert any("Connection refused" in e["event"] for e in system.log_events("relay") if e.get("logger") == "kafka.client")


def test_postgresql_restarted_while_the_pipeline_is_busy(system):
    version, cluster = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True
    ).stdout.split()[:2]

    def inject(load):
        subprocess.run(["pg_ctlcluster", version, cluster, "stop", "-m", "fast"], check=True)
        time.sleep(3)
        subprocess.run(["pg_ctlcluster", version, cluster, "start"], check=True)
        connection.close()

    run_fault(system, "PostgreSQL restart", inject)
    assert log_events(system, "worker", "task_retrying") or log_events(system, "relay", "relay_database_error")


def _all_archived(key: str, count: int) -> list[DeadLetter] | None:
    rows = list(DeadLetter.objects.filter(key=key))
    return rows if len(rows) == count else None


def test_malformed_truncated_oversized_and_unknown_events_go_to_dlq(system):
    marker = f"bad-{time.time_ns()}"
    valid = json.dumps(
        {
            "event_id": "6f1c4c52-8d7e-4b53-9d55-0d6f1b1c2a11",
            "type": "ORDER_CREATED",
            "order": {"id": "1b4e28ba-2fa1-11d2-883f-0016d3cca427", "user_id": "u", "email": "e@example.com", "items": [], "total_amount": "1.00", "status": "CREATED"},
            "metadata": {"correlation_id": marker},
        }
    )
    bad = {
        b"{definitely not json": "not_json",
        valid.encode()[: len(valid) // 2]: "not_json",
        json.dumps({"type": "ORDER_CREATED", "padding": "x" * (MAX_EVENT_BYTES + 10)}).encode(): "too_large",
        json.dumps({**json.loads(valid), "type": "ORDER_TELEPORTED"}).encode(): "unknown_type",
        json.dumps({"type": "ORDER_CREATED", "order": {}}).encode(): "invalid_envelope",
        b"": "empty",
    }

    def inject(load):
        producer = Producer({"bootstrap.servers": system.kafka.bootstrap_servers})
        for value in bad:
            producer.produce(TOPIC_ORDERS, key=marker.encode(), value=value)
            time.sleep(0.3)  # interleaved with real orders
        assert producer.flush(10) == 0

    run_fault(system, "malformed, truncated, oversized, unknown-type events", inject)
    archived = wait_until(
        lambda: _all_archived(marker, len(bad)),
        timeout=30,
        message="not every bad event reached the dead-letter archive",
    )
    assert Counter(row.reason for row in archived) == Counter(bad.values())
    assert {row.original_topic for row in archived} == {TOPIC_ORDERS}
    assert len(log_events(system, "bridge", "event_dead_lettered")) >= len(bad)
