"""End to end: orders posted over HTTP to gunicorn flow through the outbox relay, a real
Kafka-protocol broker, the bridge and a real Celery worker to their terminal state."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import urllib.request
import uuid
from collections import Counter, defaultdict
from decimal import Decimal

import pytest
from confluent_kafka import Producer

from devtools.broker import EmbeddedKafkaBroker, free_port
from devtools.harness.audit import money_audit, wait_for_completion
from devtools.harness.metrics import sample_total
from devtools.harness.process_group import ProcessGroup
from devtools.harness.sample_orders import create_test_orders, post_json, post_order
from devtools.harness.topics import BRIDGE_PARTITIONS, read_topics
from devtools.harness.waiting import wait_until
from devtools.raw_producer import produce_raw
from events.contract import ORDER_CANCELLED, ORDER_REFUNDED, TOPIC_DLQ, TOPIC_NOTIFICATIONS, TOPIC_ORDERS, TOPIC_PAYMENTS
from events.models import DeadLetter, InboxEntry, OutboxEvent
from notifications.models import Notification
from orders.models import Order, OrderStatus
from orders.services import TERMINAL_STATUSES
from orders_project.config import BASE_DIR
from payments.simulator import SimulatedGateway
from payments.models import Payment, Refund, RefundStatus, SimulatedCharge, SimulatedRefund
from recovery.models import Redrive

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

PAYMENT_SEED = "e2e-fixed-seed"
ORDER_EVENTS = {"ORDER_CREATED", "ORDER_PROCESSING", "ORDER_PAID", "PAYMENT_FAILED"}


@pytest.fixture(scope="module")
def system(django_db_setup, django_db_blocker, kafka_broker, tmp_path_factory):
    """web, relay, bridge and a Celery worker, started as run-local starts them."""
    group, port = ProcessGroup.with_web_port(
        kafka_brokers=kafka_broker.bootstrap_servers, work_dir=tmp_path_factory.mktemp("system"), PAYMENTS_SEED=PAYMENT_SEED
    )
    with django_db_blocker.unblock():
        group.start_system(port=port)
        group.broker = kafka_broker
        yield group
        group.stop_all()


def expected_status(order_id: str) -> str:
    gateway = SimulatedGateway(success_rate=0.85, timeout_rate=0.0, seed=PAYMENT_SEED)
    approved = gateway.would_approve(idempotency_key=f"{order_id}:1")
    return OrderStatus.PAID if approved else OrderStatus.PAYMENT_FAILED


def test_orders_reach_their_terminal_state_with_timeline_payment_notifications_and_events(system):
    correlation_ids, order_ids = [], []
    # At least 20 orders, and more until the seeded gateway is due to decline one (order ids are
    # random, so which ones it declines is too).
    while len(order_ids) < 20 or len({expected_status(order_id) for order_id in order_ids}) < 2:
        correlation_ids.append(f"e2e-{len(order_ids)}-{uuid.uuid4().hex[:6]}")
        order_ids.append(post_order(system.base_url, user_id=f"user_{len(order_ids) % 4}", correlation_id=correlation_ids[-1]))

    wait_for_completion(order_ids)

    statuses = Counter()
    for order_id, correlation_id in zip(order_ids, correlation_ids):
        order = Order.objects.get(pk=order_id)
        outcome_event = "ORDER_PAID" if order.status == OrderStatus.PAID else "PAYMENT_FAILED"
        assert order.status == expected_status(order_id)
        statuses[order.status] += 1
        assert order.correlation_id == correlation_id

        timeline = list(order.timeline.values_list("event_type", "status"))
        status_changes = [entry for entry in timeline if entry[0] != "NOTIFICATION_SENT"]
        assert status_changes == [("ORDER_CREATED", "CREATED"), ("ORDER_PROCESSING", "PROCESSING"), (outcome_event, order.status)]
        assert [entry[0] for entry in timeline].count("NOTIFICATION_SENT") == 3

        payment = Payment.objects.get(order=order)
        assert (payment.attempt, payment.amount, payment.gateway_calls) == (1, order.total_amount, 1)
        assert payment.status == ("APPROVED" if order.status == OrderStatus.PAID else "DECLINED")
        assert SimulatedCharge.objects.filter(idempotency_key=payment.idempotency_key).count() == 1

        notifications = Notification.objects.filter(order=order)
        assert sorted(notifications.values_list("source_event_type", "channel", "status")) == sorted(
            [(event, "email", "SENT") for event in ("ORDER_CREATED", "ORDER_PROCESSING", outcome_event)]
        )
        assert set(notifications.values_list("recipient", flat=True)) == {order.email}

    assert set(statuses) == {OrderStatus.PAID, OrderStatus.PAYMENT_FAILED}

    messages = read_topics(
        bootstrap_servers=system.broker.bootstrap_servers, topics=[TOPIC_ORDERS, TOPIC_PAYMENTS, TOPIC_NOTIFICATIONS]
    )
    per_order = defaultdict(list)
    for message in messages:
        per_order[message.key().decode()].append(message)
    for order_id, correlation_id in zip(order_ids, correlation_ids):
        order = Order.objects.get(pk=order_id)
        outcome_event = "ORDER_PAID" if order.status == OrderStatus.PAID else "PAYMENT_FAILED"
        envelopes = {}
        for message in per_order[order_id]:
            envelope = json.loads(message.value())
            headers = {name: value.decode() for name, value in message.headers()}
            assert set(envelope) >= {"event_id", "type", "order", "timestamp", "metadata"}
            assert headers == {"event_type": envelope["type"], "event_id": envelope["event_id"], "correlation_id": correlation_id}
            assert envelope["metadata"]["correlation_id"] == correlation_id
            assert envelope["order"]["id"] == order_id
            envelopes.setdefault(message.topic(), []).append(envelope)
        # Per order and topic, Kafka holds the events in the order they happened, each once.
        assert [e["type"] for e in envelopes[TOPIC_ORDERS]] == ["ORDER_CREATED", "ORDER_PROCESSING"]
        assert [e["type"] for e in envelopes[TOPIC_PAYMENTS]] == [outcome_event]
        assert [e["order"]["status"] for e in envelopes[TOPIC_ORDERS] + envelopes[TOPIC_PAYMENTS]] == [
            "CREATED",
            "PROCESSING",
            order.status,
        ]
        sent = envelopes[TOPIC_NOTIFICATIONS]
        assert sorted(e["details"]["source_event_type"] for e in sent) == sorted(["ORDER_CREATED", "ORDER_PROCESSING", outcome_event])
        assert len({e["event_id"] for e in sent}) == 3
    # The log lines of every process carry the request's correlation id for its order.
    worker_lines = [e for e in system.log_events("worker") if e.get("order_id") == order_ids[0]]
    assert worker_lines and {e.get("correlation_id") for e in worker_lines} == {correlation_ids[0]}
    # Celery's own task lines too: the receipt and end of a step the batch's orders take together
    # name its orders.
    batch_lines = [e for e in system.log_events("worker") if order_ids[0] in e.get("order_ids", [])]
    received = {e["task"] for e in batch_lines if e["event"] == "task_received"}
    assert {"orders.process_orders", "payments.charge_payments"} <= received
    assert any(e["event"] == "task_done" and e["state"] == "SUCCESS" for e in batch_lines)
    assert all(line.startswith("{") for line in system.log("worker").splitlines() if line.strip())


def test_malformed_messages_go_to_dlq_with_reason_and_bridge_keeps_going(system):
    producer = Producer({"bootstrap.servers": system.broker.bootstrap_servers})
    marker = uuid.uuid4().hex
    valid_like = json.dumps({"event_id": str(uuid.uuid4()), "type": "ORDER_CREATED", "order": {"id": marker}})
    bad = {
        f"not json {marker}".encode(): "not_json",
        json.dumps({"type": "ORDER_EXPLODED", "marker": marker}).encode(): "unknown_type",
        valid_like.encode()[:-7]: "not_json",  # truncated
        json.dumps([marker]).encode(): "invalid_envelope",
        b"\xff\xfe" + marker.encode(): "not_json",
    }
    for value in bad:
        producer.produce(TOPIC_ORDERS, key=marker.encode(), value=value)
    producer.flush(10)

    order_id = post_order(system.base_url, user_id="after_bad_input")
    wait_for_completion([order_id])

    def dead_letters():
        found = [m for m in read_topics(bootstrap_servers=system.broker.bootstrap_servers, topics=[TOPIC_DLQ]) if m.key() == marker.encode()]
        return found if len(found) == len(bad) else None

    found = wait_until(dead_letters, timeout=30, message="bad messages did not all reach dlq")
    for message in found:
        headers = {name: value.decode() for name, value in message.headers()}
        assert message.value() in bad, "dlq keeps the original bytes"
        assert headers["dlq_reason"] == bad[message.value()]
        assert headers["dlq_error"]
        assert headers["dlq_source"] == "kafka-bridge"
        assert headers["dlq_original_topic"] == TOPIC_ORDERS
    assert Order.objects.get(pk=order_id).status in TERMINAL_STATUSES


def test_the_poison_of_issue_20_goes_to_dlq_and_the_same_bridge_process_goes_on(system):
    """Messages that used to kill the bridge at every restart: an unhashable type, 5 KB of nested
    lists, a header without a value, a header name that is not UTF-8."""
    bridge = system.processes["bridge"]
    marker = uuid.uuid4().hex
    poison = {
        b'{"type": []}': "unknown_type",
        b'{"type": {}}': "unknown_type",
        b"[" * 2500 + b"]" * 2500: "too_deep",
        f"null header {marker}".encode(): "not_json",
        f'{{"unreadable": "{marker}"}}'.encode(): "unreadable",
    }
    values = list(poison)
    producer = Producer({"bootstrap.servers": system.broker.bootstrap_servers})
    for value in values[:3]:
        producer.produce(TOPIC_ORDERS, key=marker.encode(), value=value)
    producer.produce(TOPIC_ORDERS, key=marker.encode(), value=values[3], headers=[("trace", None), ("binary", b"\xff")])
    assert producer.flush(10) == 0
    produce_raw(system.broker.bootstrap_servers, TOPIC_ORDERS, [(marker.encode(), values[4], [(b"\xffname", b"x")])])

    order_id = post_order(system.base_url, user_id="after_poison")
    wait_for_completion([order_id])

    assert bridge.poll() is None and system.processes["bridge"] is bridge, "the bridge never stopped"
    assert [e["event"] for e in system.log_events("bridge")].count("bridge_started") == 1
    # Each on dlq, read back by the bridge and archived with its reason and readable content.
    rows = wait_until(
        lambda: (found := list(DeadLetter.objects.filter(key=marker))) and len(found) == len(poison) and found,
        timeout=30,
        message="the poison did not all reach the dead-letter archive",
    )
    for row in rows:
        value = base64.b64decode(row.original_value_b64)
        assert (row.reason, row.source, row.original_topic) == (poison[value], "kafka-bridge", TOPIC_ORDERS)
        assert row.value == value.decode() and row.error
    null_header = next(row for row in rows if row.reason == "not_json")
    assert json.loads(null_header.headers["dlq_original_headers_b64"]) == [["trace", None], ["binary", "/w=="]]
    unreadable = next(row for row in rows if row.reason == "unreadable")
    assert "SystemError" in unreadable.headers["dlq_original_headers_unreadable"]
    assert Order.objects.get(pk=order_id).status in TERMINAL_STATUSES


def test_forged_events_go_to_dlq_with_their_reason_and_nothing_is_sent_even_once_an_operator_republishes_them(
    system, admin_client
):
    order_id = post_order(system.base_url, user_id="forged_target")
    wait_for_completion([order_id])
    created = OutboxEvent.objects.get(key=order_id, event_type="ORDER_CREATED").payload
    attacker = "attacker@example.net"
    unknown_order = {**created, "event_id": str(uuid.uuid4()), "order": {**created["order"], "id": str(uuid.uuid4()), "email": attacker}}
    new_event_id = {**created, "event_id": str(uuid.uuid4()), "order": {**created["order"], "email": attacker}}
    altered = {**created, "order": {**created["order"], "email": attacker}}
    forged = {"unknown order": unknown_order, "new event id": new_event_id, "altered": altered}
    before = {
        "timeline": Order.objects.get(pk=order_id).timeline.count(),
        "notifications": Notification.objects.filter(order_id=order_id).count(),
    }

    producer = Producer({"bootstrap.servers": system.broker.bootstrap_servers})
    for event in forged.values():
        producer.produce(TOPIC_ORDERS, key=event["order"]["id"].encode(), value=json.dumps(event).encode())
    assert producer.flush(10) == 0

    def archived():
        rows = list(DeadLetter.objects.filter(source="kafka-bridge", value__contains=attacker))
        return rows if len(rows) == len(forged) else None

    rows = wait_until(archived, timeout=30, message="the forged events did not all reach the dead-letter archive")
    reasons = {json.loads(row.value)["order"]["id"] + json.loads(row.value)["event_id"]: row.reason for row in rows}
    assert reasons == {
        unknown_order["order"]["id"] + unknown_order["event_id"]: "unknown_event",
        order_id + new_event_id["event_id"]: "unknown_event",
        order_id + created["event_id"]: "event_mismatch",
    }
    assert all(row.error for row in rows)
    # Nothing acted on them: no email to the address in the events, nothing written for the order.
    assert not Order.objects.filter(pk=unknown_order["order"]["id"]).exists()
    assert not Notification.objects.filter(recipient=attacker).exists()
    assert not any(attacker in line for line in system.log("worker").splitlines() if "To:" in line or "recipient" in line)
    assert Order.objects.get(pk=order_id).timeline.count() == before["timeline"]
    assert Notification.objects.filter(order_id=order_id).count() == before["notifications"]

    # Re-published in bulk by an operator, they are refused again: the outbox did not record them.
    outbox_rows = OutboxEvent.objects.count()
    response = admin_client.post(
        "/admin/events/deadletter/", {"action": "republish", "_selected_action": [row.pk for row in rows]}, follow=True
    )
    page = response.content.decode()
    assert "Re-published" not in page and page.count("only an event") == len(forged)
    assert OutboxEvent.objects.count() == outbox_rows
    assert not DeadLetter.objects.filter(pk__in=[row.pk for row in rows], republished_at__isnull=False).exists()


def test_an_event_delivered_twice_changes_nothing_the_second_time(system):
    order_id = post_order(system.base_url, user_id="twice")
    wait_for_completion([order_id])
    created = next(
        m
        for m in read_topics(bootstrap_servers=system.broker.bootstrap_servers, topics=[TOPIC_ORDERS])
        if m.key().decode() == order_id and json.loads(m.value())["type"] == "ORDER_CREATED"
    )
    event_id = json.loads(created.value())["event_id"]

    def snapshot():
        order = Order.objects.get(pk=order_id)
        return {
            "status": order.status,
            "updated_at": order.updated_at,
            "timeline": list(order.timeline.values_list("id", flat=True)),
            "payments": list(Payment.objects.filter(order=order).values_list("id", "status", "gateway_calls")),
            "charges": SimulatedCharge.objects.filter(idempotency_key__startswith=order_id).count(),
            "notifications": list(Notification.objects.filter(order=order).values_list("id", flat=True)),
            "outbox": OutboxEvent.objects.count(),
        }

    before = snapshot()
    producer = Producer({"bootstrap.servers": system.broker.bootstrap_servers})
    producer.produce(TOPIC_ORDERS, key=created.key(), value=created.value(), headers=created.headers())
    producer.flush(10)

    handlers = ("orders.start_processing", "payments.charge_order", "notifications.email")
    wait_until(
        lambda: InboxEntry.objects.filter(event_id=event_id, handler__in=handlers, redeliveries=1).count() == len(handlers),
        timeout=30,
        message="the duplicate was not seen by every handler",
    )
    assert snapshot() == before


def test_relay_started_while_kafka_is_down_publishes_everything_once_it_is_up(system, tmp_path):
    outage_broker = EmbeddedKafkaBroker(port=free_port(), log_path=tmp_path / "broker.log")
    system.stop("relay")  # one relay per SQLite database: the test's relay takes over
    relay = ProcessGroup(env={**system.env, "KAFKA_BROKERS": outage_broker.bootstrap_servers}, log_dir=tmp_path)
    try:
        relay.start("relay")
        order_ids = create_test_orders(10, prefix="outage", price="9.99")
        wait_until(
            lambda: any(e["event"] == "kafka_unavailable" for e in relay.log_events("relay")),
            timeout=30,
            message="relay did not notice Kafka is down",
        )
        assert OutboxEvent.objects.filter(published_at__isnull=True).count() >= 10

        outage_broker.start()
        wait_until(
            lambda: not OutboxEvent.objects.filter(key__in=order_ids, published_at__isnull=True).exists(),
            timeout=60,
            message="relay did not catch up after Kafka came back",
        )
        published = [
            json.loads(m.value())
            for m in read_topics(bootstrap_servers=outage_broker.bootstrap_servers, topics=[TOPIC_ORDERS])
        ]
        created = Counter(e["order"]["id"] for e in published if e["type"] == "ORDER_CREATED")
        assert {order_id: created[order_id] for order_id in order_ids} == dict.fromkeys(order_ids, 1)
    finally:
        relay.stop_all()
        outage_broker.stop()
        system.start("relay")


def test_an_order_whose_tasks_the_celery_broker_lost_is_re_driven_from_the_database(system):
    system.stop("worker")
    system.stop("reconciler")
    try:
        order_id = post_order(system.base_url, user_id="lost_tasks")
        wait_until(
            lambda: any(e["event"] == "event_dispatched" and e.get("order_id") == order_id for e in system.log_events("bridge")),
            timeout=30,
            message="the bridge did not hand the order's event to Celery",
        )
        # The broker loses what it held (a Redis restarted empty, a worker killed on the SQL transport).
        purge = [sys.executable, "-m", "celery", "-A", "orders_project", "purge", "-f", "-Q", system.env["CELERY_QUEUE"]]
        purged = subprocess.run(purge, cwd=BASE_DIR, env=system.env, check=True, capture_output=True, text=True).stdout
        assert re.search(r"Purged [1-9]\d* message", purged), purged
        system.start("worker")
        system.start(
            "reconciler_fast", command="reconciler", RECONCILER_STUCK_AFTER_CREATED="3", RECONCILER_INTERVAL="0.5"
        )
        wait_for_completion([order_id])
    finally:
        system.stop("reconciler_fast")
        system.start("reconciler")

    order = Order.objects.get(pk=order_id)
    assert order.status == expected_status(order_id)
    redrive = Redrive.objects.get(order=order)
    assert (redrive.event_type, redrive.reason) == ("ORDER_CREATED", "stuck_created")
    assert SimulatedCharge.objects.filter(idempotency_key__startswith=order_id).count() == 1
    assert Notification.objects.filter(order=order).count() == 3
    assert any(e["event"] == "order_redriven" and e["order_id"] == order_id for e in system.log_events("reconciler_fast"))


def test_payment_that_keeps_timing_out_parks_the_order_then_republishing_completes_it(system, admin_client):
    system.stop("worker")
    system.start(
        "worker_with_timeouts",
        command="worker",
        PAYMENTS_TIMEOUT_RATE="1.0",
        CELERY_MAX_RETRIES="2",
        CELERY_RETRY_BACKOFF="0.05",
    )
    try:
        order_id = post_order(system.base_url, user_id="always_timeout")
        wait_until(
            lambda: Order.objects.get(pk=order_id).status == OrderStatus.FAILED, timeout=60, message="order not parked"
        )
    finally:
        system.stop("worker_with_timeouts")
        system.start("worker")

    payment = Payment.objects.get(order_id=order_id)
    # The first call and two retries, all under one idempotency key: one charge at the gateway.
    assert (payment.status, payment.gateway_calls) == ("PENDING", 3)
    assert SimulatedCharge.objects.get(idempotency_key=payment.idempotency_key).calls == 3
    timeline = list(Order.objects.get(pk=order_id).timeline.exclude(event_type="NOTIFICATION_SENT").values_list("status", flat=True))
    assert timeline == ["CREATED", "PROCESSING", "FAILED"]

    def parked_event():
        for message in read_topics(bootstrap_servers=system.broker.bootstrap_servers, topics=[TOPIC_DLQ]):
            if message.key() == order_id.encode():
                return message
        return None

    message = wait_until(parked_event, timeout=30, message="no dlq event for the parked order")
    headers = {name: value.decode() for name, value in message.headers()}
    assert headers["dlq_reason"] == "payment_gave_up"
    assert "GatewayTimeout" in headers["dlq_error"]
    assert json.loads(message.value())["type"] == "ORDER_CREATED"
    assert any(e["event"] == "order_parked" for e in system.log_events("worker_with_timeouts"))

    # The bridge archives the dlq message; after the fix (the gateway answers again) an operator
    # re-publishes it and the order completes, charged once under the same key.
    dead_letter = wait_until(
        lambda: DeadLetter.objects.filter(key=order_id, reason="payment_gave_up").first(), timeout=30
    )
    response = admin_client.post(
        "/admin/events/deadletter/", {"action": "republish", "_selected_action": [dead_letter.pk]}, follow=True
    )
    assert "Re-published: 1" in response.content.decode()
    wait_for_completion([order_id], notifications_per_order=3)
    order = Order.objects.get(pk=order_id)
    assert order.status == expected_status(order_id)
    payment = Payment.objects.get(order_id=order_id)
    assert payment.status in ("APPROVED", "DECLINED") and payment.gateway_calls == 4
    assert SimulatedCharge.objects.filter(idempotency_key__startswith=order_id).count() == 1
    assert [entry for entry in order.timeline.values_list("status", flat=True)][-1] == order.status


def test_admin_payment_retry_charges_a_declined_order_again_through_the_pipeline(system, admin_client):
    gateway = SimulatedGateway(success_rate=0.85, timeout_rate=0.0, seed=PAYMENT_SEED)
    while True:  # an order the seeded gateway declines
        order_id = post_order(system.base_url, user_id="declined_then_retried")
        if not gateway.would_approve(idempotency_key=f"{order_id}:1"):
            break
    wait_for_completion([order_id])
    assert Order.objects.get(pk=order_id).status == OrderStatus.PAYMENT_FAILED

    response = admin_client.post(
        "/admin/orders/order/", {"action": "retry_payment", "_selected_action": [order_id]}, follow=True
    )
    assert "Payment retry requested: 1" in response.content.decode()
    second_approves = gateway.would_approve(idempotency_key=f"{order_id}:2")
    wait_until(
        lambda: Payment.objects.filter(order_id=order_id, attempt=2).exclude(status="PENDING").exists(),
        timeout=30,
        message="the retry was not charged",
    )
    # ORDER_PROCESSING (retry) and the outcome get their notifications too: 3 + 2.
    wait_for_completion([order_id], notifications_per_order=5)

    order = Order.objects.get(pk=order_id)
    assert order.status == (OrderStatus.PAID if second_approves else OrderStatus.PAYMENT_FAILED)
    assert list(Payment.objects.filter(order=order).values_list("attempt", "status")) == [
        (1, "DECLINED"),
        (2, "APPROVED" if second_approves else "DECLINED"),
    ]
    assert Payment.objects.filter(order=order, status="APPROVED").count() <= 1


@pytest.mark.parametrize("name, stopped_event", [("relay", "relay_stopped"), ("bridge", "bridge_stopped"), ("worker", None)])
def test_processes_stop_cleanly_on_sigterm(system, name, stopped_event):
    assert system.stop(name) == 0
    if stopped_event:
        assert system.log_events(name)[-1]["event"] == stopped_event
    else:
        assert "Warm shutdown" in system.log(name)
    system.start(name)


def _settled_lag(system) -> dict | None:
    lag = {key: value for key, value in system.metrics("bridge").items() if key[0] == "bridge_consumer_lag"}
    return lag if len(lag) == BRIDGE_PARTITIONS and not any(lag.values()) else None


def test_metrics_of_every_process_follow_the_orders(system):
    def scrape():
        return {name: system.metrics(name) for name in ("web", "relay", "bridge", "worker")}

    def scrape_when_quiet():
        """Counters once earlier tests' last events are through (a process may be restarting)."""
        try:
            if OutboxEvent.objects.filter(published_at__isnull=True).exists() or not _settled_lag(system):
                return None
            return scrape()
        except OSError:
            return None

    before = wait_until(scrape_when_quiet, timeout=30)
    order_ids = [post_order(system.base_url, user_id=f"metrics_{index}") for index in range(5)]
    wait_for_completion(order_ids)
    statuses = Counter(Order.objects.filter(pk__in=order_ids).values_list("status", flat=True))
    # Counters are read after the work they count: the bridge's dispatches and the worker's emails.
    def counted(samples: dict, process: str, name: str, **labels: str) -> float:
        return sample_total(samples[process], name, **labels) - sample_total(before[process], name, **labels)

    def all_counted():
        samples = scrape()
        return (
            counted(samples, "bridge", "bridge_messages_total", outcome="dispatched") >= 15
            and counted(samples, "worker", "notifications_total", channel="email", outcome="sent") >= 15
            and counted(samples, "worker", "pipeline_tasks_total", task="notifications.send_notifications_batch") >= 1
            # web reads the database's gauges at most every couple of seconds.
            and all(counted(samples, "web", "orders", status=status) == statuses[status] for status in statuses)
            and sample_total(samples["web"], "outbox_backlog") == 0
        ) and samples

    after = wait_until(all_counted, timeout=30)

    def grew(process: str, name: str, **labels: str) -> float:
        return sample_total(after[process], name, **labels) - sample_total(before[process], name, **labels)

    assert grew("web", "http_requests_total", view="order-list", method="POST", status="201") == 5
    assert grew("web", "http_request_duration_seconds_count", view="order-list", method="POST") == 5
    for status in (OrderStatus.PAID, OrderStatus.PAYMENT_FAILED):
        assert grew("web", "orders", status=status) == statuses[status]
    assert sample_total(after["web"], "outbox_backlog") == 0
    assert sample_total(after["web"], "outbox_oldest_unpublished_age_seconds") == 0
    # ORDER_CREATED, ORDER_PROCESSING, the outcome and three NOTIFICATION_SENT per order.
    assert grew("relay", "outbox_events_published_total") == 30
    assert grew("bridge", "bridge_messages_total", outcome="dispatched") == 15
    # NOTIFICATION_SENT is for other consumers: the bridge does not read the notifications topic.
    assert grew("bridge", "bridge_messages_total", topic="notifications") == 0
    # Lag is read every couple of seconds: every partition reported, none behind once all is handled.
    lag = wait_until(
        lambda: _settled_lag(system),
        timeout=15,
        message=f"bridge did not report zero lag on its {BRIDGE_PARTITIONS} partitions",
    )
    assert {dict(labels)["topic"] for _name, labels in lag} == {"orders", "payments", "dlq"}
    # The orders of each batch the bridge reads go through their chain together (up to 20 each).
    chains = grew("worker", "pipeline_tasks_total", task="orders.process_orders", outcome="success")
    assert 1 <= chains <= 5
    assert grew("worker", "pipeline_tasks_total", task="payments.charge_payments", outcome="success") == chains
    # The bridge hands the notifications of each batch it reads to one task (up to 20 events each).
    batches = grew("worker", "pipeline_tasks_total", task="notifications.send_notifications_batch", outcome="success")
    assert 1 <= batches <= 15
    assert grew("worker", "payments_total", outcome="approved") == statuses[OrderStatus.PAID]
    assert grew("worker", "payments_total", outcome="declined") == statuses[OrderStatus.PAYMENT_FAILED]
    assert grew("worker", "notifications_total", channel="email", outcome="sent") == 15


# --- Cancel and refund (issue 22) ----------------------------------------------------------------


def paid_orders(base_url: str, count: int) -> list[str]:
    """``count`` orders posted and paid (the seeded gateway approves their first charge)."""
    order_ids = []
    while len([order_id for order_id in order_ids if expected_status(order_id) == OrderStatus.PAID]) < count:
        order_ids.append(post_order(base_url, user_id=f"refunding_{len(order_ids)}"))
    wait_for_completion(order_ids)
    return [order_id for order_id in order_ids if expected_status(order_id) == OrderStatus.PAID][:count]


def cancelled_or_refunded(order_id: str, status: str) -> bool:
    """The order reached ``status``, with no refund in flight and the customer told of it."""
    order = Order.objects.get(pk=order_id)
    told = ORDER_CANCELLED if status == OrderStatus.CANCELLED else ORDER_REFUNDED
    return (
        order.status == status
        and not order.refunds.filter(status=RefundStatus.REQUESTED).exists()
        and Notification.objects.filter(order_id=order_id, status="SENT", source_event_type=told).exists()
    )


def test_a_paid_order_cancelled_and_another_half_refunded_through_the_pipeline(system):
    cancelled, refunded = paid_orders(system.base_url, 2)
    charge = Payment.objects.get(order_id=refunded, status="APPROVED").amount
    half = (charge / 2).quantize(Decimal("0.01"))

    status, answer = post_json(f"{system.base_url}/orders/{cancelled}/cancel", {"reason": "changed my mind"})
    assert (status, answer["status"]) == (202, OrderStatus.CANCELLING), answer
    status, answer = post_json(f"{system.base_url}/orders/{refunded}/refunds", {"amount": str(half), "reason": "one broke"})
    assert (status, answer["status"], Decimal(answer["amount"])) == (202, RefundStatus.REQUESTED, half), answer

    wait_until(lambda: cancelled_or_refunded(cancelled, OrderStatus.CANCELLED), timeout=60, interval=0.2, message="not cancelled")
    wait_until(lambda: cancelled_or_refunded(refunded, OrderStatus.PARTIALLY_REFUNDED), timeout=60, interval=0.2, message="not refunded")

    # The cancelled order's charge came back in full, as one refund, in the gateway's ledger too.
    order = Order.objects.get(pk=cancelled)
    steps = [event_type for event_type in order.timeline.values_list("event_type", flat=True) if event_type != "NOTIFICATION_SENT"]
    assert steps[2:] == ["ORDER_PAID", "CANCELLATION_REQUESTED", "REFUND_REQUESTED", ORDER_REFUNDED, ORDER_CANCELLED]
    (refund,) = Refund.objects.filter(order_id=cancelled)
    payment = Payment.objects.get(order_id=cancelled, status="APPROVED")
    assert (refund.status, refund.amount, payment.refunded_amount) == (RefundStatus.SUCCEEDED, payment.amount, payment.amount)
    assert SimulatedRefund.objects.get(idempotency_key=refund.idempotency_key).approved

    # The other shows its refund, and keeps the rest.
    with urllib.request.urlopen(f"{system.base_url}/orders/{refunded}", timeout=10) as response:
        shown = json.load(response)
    # str(): refunded_amount comes as a JSON number, unlike the other amounts (strings).
    assert (shown["status"], Decimal(str(shown["refunded_amount"]))) == (OrderStatus.PARTIALLY_REFUNDED, half)
    (listed,) = shown["refunds"]
    assert (listed["status"], Decimal(listed["amount"]), listed["reason"]) == (RefundStatus.SUCCEEDED, half, "one broke")
    assert listed["gateway_reference"].startswith("simr_")

    assert money_audit([cancelled, refunded]) == []
