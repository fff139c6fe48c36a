"""The fault suite: real failures while orders are being posted, and what the pipeline keeps.

Runs web (gunicorn), relay, bridge, a Celery worker and the reconciler as processes on
PostgreSQL, with a Redis server of the suite's own as the Celery broker (so that tests can kill
it) and a Kafka-protocol broker that keeps its data in a local S3 store (so it can be stopped and
started again like a real Kafka broker). Each test posts orders at a steady rate from a
client that re-sends with its Idempotency-Key on errors, injects one fault, recovers, and then
audits every order that got a 201: it reached a terminal state within two minutes of the end of
the fault (the reconciler's promise with its default deadlines), was charged at most once, got
each notification once, and its timeline shows each status once. The results are printed
as a table at the end of the run (see conftest.py) and recorded in docs/reliability.md.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from decimal import ROUND_UP, Decimal
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from confluent_kafka import Producer
from django.db import connection

from devtools.broker import EmbeddedKafkaBroker, free_port
from devtools.harness.audit import audit as audit_orders
from devtools.harness.faults import FAULT_REPORT, fault_row, redriven_orders
from devtools.harness.faults import fault_order_body as order_body
from devtools.harness.faults import inbox_redeliveries as redeliveries
from devtools.harness.load import OrderLoad
from devtools.harness.object_store import ObjectStore
from devtools.harness.overload import THROTTLE, assert_waited_for_not_redriven, run_overload
from devtools.harness.process_group import ProcessGroup
from devtools.harness.restore_drill import PROCESSES, ProcessGroupStack, assert_came_back_whole, run_drill
from devtools.harness.sample_orders import post_json, post_order
from devtools.harness.topics import BRIDGE_PARTITIONS
from devtools.harness.waiting import wait_until
from events.contract import REFUND_REQUESTED, TOPIC_ORDERS
from events.models import DeadLetter, OutboxEvent
from messaging.routes import CHARGE_PAYMENTS, PROCESS_ORDERS, REFUND_PAYMENT
from orders.models import Order, OrderStatus, OrderTimelineEntry
from payments.models import Cancellation, Payment, PaymentStatus, Refund, RefundStatus, SimulatedRefund
from payments.simulator import SimulatedGateway
from recovery.models import Redrive

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e, pytest.mark.fault]

RATE = 8  # orders per second while a fault happens
PAYMENT_SEED = "fault-suite-seed"
MAX_EVENT_BYTES = 65536
GATEWAY = SimulatedGateway(success_rate=0.85, timeout_rate=0.0, seed=PAYMENT_SEED)
# Every accepted order is complete this long after the fault ended: the reconciler re-drives a
# stranded order 30 s (CREATED) or 45 s (PROCESSING) after its last change, then with a backoff
# of 15, 30, 60 s (config.yaml, "reconciler"; the suite keeps those defaults).
RECOVERY_BOUND = 120.0
# The chaos run: how long, its seed (FAULT_CHAOS_SEED replays another run's sequence of kills).
CHAOS_SECONDS = 120.0
CHAOS_SEED = int(os.environ.get("FAULT_CHAOS_SEED", "20261125"))
CHAOS_VICTIMS = ("relay", "bridge", "worker", "kafka")
T = TypeVar("T")


class RedisServer:
    """A Redis server of the suite's own on a free port, for the Celery broker, so that tests can
    kill it (never the machine's Redis). It keeps nothing on disk: started again, it is empty."""

    def __init__(self, *, work_dir: Path):
        self.port = free_port()
        self.work_dir = work_dir
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def start(self) -> RedisServer:
        server = shutil.which("redis-server")
        assert server, "the fault suite needs redis-server on the PATH"
        self.process = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.work_dir)],
            stdout=(self.work_dir / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_until(self._answers, timeout=30, interval=0.05, message=f"redis-server on port {self.port} did not start")
        return self

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with code {self.process.returncode}: {self.work_dir / 'redis.log'}")
        try:
            return self.client().ping()
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: what it held (queued and unacknowledged tasks) is gone."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def fetches_waiting(self) -> int:
        """Clients blocked in a fetch (BRPOP): a worker frozen during one still takes the next
        task pushed before the fetch's timeout, into a socket it does not read."""
        return self.client().info("clients")["blocked_clients"]

    def queue_length(self, queue: str) -> int:
        return self.client().llen(queue)

    def queued_chain_orders(self, queue: str, *, tasks: tuple[str, ...] = (PROCESS_ORDERS, CHARGE_PAYMENTS)) -> set[str]:
        """The orders whose chain task (process_orders or charge_payments, or one of ``tasks``)
        waits in ``queue`` now."""
        orders = set()
        for raw in self.client().lrange(queue, 0, -1):
            message = json.loads(raw)
            if message.get("headers", {}).get("task") not in tasks:
                continue
            body = message["body"]
            if message.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            [events] = json.loads(body)[0]
            for event in events if isinstance(events, list) else [events]:
                orders.add(event["order"]["id"])
        return orders


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
def redis_server(tmp_path_factory):
    server = RedisServer(work_dir=tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def system(django_db_setup, django_db_blocker, kafka, redis_server, tmp_path_factory):
    port = free_port()
    # The reconciler runs with its default deadlines (no RECONCILER_* here): the suite checks
    # the recovery time they promise.
    group = ProcessGroup.for_tests(
        kafka_brokers=kafka.bootstrap_servers,
        work_dir=tmp_path_factory.mktemp("faults"),
        CELERY_BROKER_URL=redis_server.url,
        HTTP_PORT=str(port),
        HTTP_WORKERS="2",
        PAYMENTS_SEED=PAYMENT_SEED,
        # A charge takes a while, so a worker can be killed in the middle of one.
        PAYMENTS_LATENCY_MS="150",
        # The worker's threads, as config.yaml's default: with 2, about 10 charges a second for
        # 8 orders, a backlog left by a fault drained barely faster than orders came.
        CELERY_CONCURRENCY="4",
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
        group.redis = redis_server
        yield group
        group.stop_all()


def _assigned(system, name: str, count: int = 1) -> bool:
    """The last assignment logged by bridge ``name`` has at least ``count`` partitions."""
    assignments = [e for e in system.log_events(name) if e["event"] in ("partitions_assigned", "partitions_revoked")]
    return bool(assignments) and assignments[-1]["event"] == "partitions_assigned" and len(assignments[-1]["partitions"]) >= count


def audit(system, order_ids: list[str]) -> dict:
    """What happened to the orders that got a 201 (devtools.harness.audit.audit), the emails
    counted in the workers' logs."""
    return audit_orders(order_ids, logs=system.log_dir.glob("worker*.log"), gateway=GATEWAY)


def run_fault(
    system,
    name: str | Callable[[], str],
    inject,
    *,
    before: float = 3.0,
    after: float = 3.0,
    recover_within: float = RECOVERY_BOUND,
    orders: tuple[str, ...] = (),
) -> dict:
    """Post orders, inject the fault (``inject`` returns when the fault is over: its recovery
    action is done), keep posting a little, then wait for every accepted order to finish and
    audit them. Every accepted order must be complete within ``recover_within`` seconds of the
    end of the fault; the wait goes on twice as long, so that the table says how late it was.
    ``orders``: the test's own (paid before the fault, say), audited too, outside the table's row."""
    redelivered_before = redeliveries()
    load = OrderLoad(base_url=system.base_url, rate=RATE, body=order_body).start()
    try:
        time.sleep(before)
        inject(load)
        recovered_at = time.monotonic()
        time.sleep(after)
    finally:
        load.stop()  # a fault that fails leaves no load behind for the next test
    connection.close()  # the test's own connection may predate a database restart

    def finished():
        result = audit(system, [*load.accepted, *orders])
        return result if not result["unfinished"] and not result["unnotified"] and not result["missing"] else None

    try:
        wait_until(finished, timeout=max(1.0, recovered_at + 2 * recover_within - time.monotonic()), interval=1.0)
    except TimeoutError:
        pass  # reported below as lost
    recover_s = round(time.monotonic() - recovered_at, 1)
    result = audit(system, load.accepted)
    row = fault_row(
        name=name() if callable(name) else name,
        load=load,
        result=result,
        recover_s=recover_s,
        redelivered_before=redelivered_before,
    )
    FAULT_REPORT.append(row)
    assert not load.unaccepted, f"orders the API never accepted: {len(load.unaccepted)}"
    for audited in (result, audit(system, list(orders))):
        assert audited["lost"] == 0, {key: audited[key][:5] for key in ("missing", "unfinished", "unnotified")}
        assert audited["duplicates"] == 0, row
        assert not audited["wrong_outcome"], [str(o.id) for o in audited["wrong_outcome"][:5]]
        assert not audited["money"], audited["money"][:5]
    assert recover_s <= recover_within, f"recovered {recover_s} s after the fault ended, more than {recover_within} s"
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
        wait_until(lambda: _assigned(system, "bridge_b", count=BRIDGE_PARTITIONS), timeout=60, message="no takeover")
        system.start("bridge")

    try:
        run_fault(system, "bridge SIGKILL, second bridge takes over", inject, after=5.0)
    finally:
        system.stop("bridge_b")
    wait_until(lambda: _assigned(system, "bridge", count=BRIDGE_PARTITIONS), timeout=60, message="bridge did not get its partitions back")


def kill_worker_mid_call(
    system, name: str, *, in_flight: Callable[[OrderLoad], T], task: str, orders: tuple[str, ...] = ()
) -> T:
    """The fault ``name``: once ``in_flight(load)`` returns (a gateway call is under way: it waits
    for one), SIGKILL the worker and start another, which takes up the dead one's ``task`` when
    Redis hands it back. Returns what ``in_flight`` did. ``orders``: the test's own, audited too."""
    seen = []

    def inject(load):
        seen.append(in_flight(load))
        system.kill("worker")
        system.start("worker_b", command="worker")

    try:
        run_fault(system, name, inject, orders=orders)
    finally:
        system.stop("worker_b")
        system.start("worker")
    assert any(e["event"] == "task_received" and e["task"] == task for e in system.log_events("worker_b"))
    return seen[0]


def test_worker_killed_during_a_payment_and_another_started(system):
    def in_flight(load):
        # A charge is under way when its attempt is open (PENDING): the gateway takes 150 ms.
        wait_until(
            lambda: Payment.objects.filter(status="PENDING", order_id__in=load.accepted).exists(),
            timeout=30,
            interval=0.01,
            message="no payment in flight",
        )

    kill_worker_mid_call(system, "worker SIGKILL during a payment", in_flight=in_flight, task=CHARGE_PAYMENTS)


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


def refused_callback_orders(system) -> set[str]:
    """Orders whose next chain step a worker could not publish (Celery: "Giving up refused
    callback publish"): the step before it committed, the one after it is lost. A batch's step
    names its orders in ``order_ids``."""
    orders = set()
    for log in system.log_dir.glob("worker*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if "Giving up refused callback publish" in line and line.startswith("{"):
                try:
                    logged = json.loads(line)
                except json.JSONDecodeError:
                    continue
                orders.update(logged.get("order_ids") or [])
                if logged.get("order_id"):
                    orders.add(logged["order_id"])
    return orders


def assert_redriven(system, lost: set[str]) -> None:
    """The reconciler re-drove each of the orders whose work the fault destroyed."""
    not_redriven = lost - redriven_orders(list(lost))
    assert not not_redriven, f"{len(not_redriven)} of {len(lost)} orders that lost work were not re-driven: {sorted(not_redriven)[:5]}"
    logged = {event.get("order_id") for event in log_events(system, "reconciler", "order_redriven")}
    assert lost <= logged, sorted(lost - logged)[:5]


def broker_connections(system, name: str = "worker") -> int:
    """How often the worker (all its runs: they share a log) has connected to the Celery broker."""
    return system.log(name).count('"Connected to redis://')


def supervise_worker(system, *, connections_before: int) -> int | None:
    """Once the Celery broker is back: wait until the worker has connected to it again or exited.
    A worker that exited is started again, as its supervisor would (docker compose's
    ``restart: unless-stopped``, Kubernetes, run-local); returns its exit code, None if it went on.

    Celery 5.7 / kombu 5.7 let a worker that holds unacknowledged tasks when it loses its Redis
    connection exit with code 1 (see docs/reliability.md, "Known limits")."""
    worker = system.processes["worker"]
    wait_until(
        lambda: worker.poll() is not None or broker_connections(system) > connections_before,
        timeout=60,
        interval=0.2,
        message="the worker neither connected to the new Redis nor exited",
    )
    if worker.poll() is None:
        return None
    print(f"the worker exited with code {worker.returncode} on losing Redis; started again, as its supervisor would")
    system.processes.pop("worker")
    system.start("worker")
    return worker.returncode


def redis_fault_name(name: str, exits: list[int]) -> Callable[[], str]:
    return lambda: name + ("; the worker exited on losing Redis and was restarted" if exits else "")


def lose_redis_with_a_backlog(system, *, backlog: Callable[[], set[str] | None], exits: list[int], meanwhile=lambda: None) -> set[str]:
    """Freeze the worker so that tasks pile up in Redis (after ``meanwhile()`` asked for more
    work), wait until ``backlog()`` gives the orders whose tasks wait there, SIGKILL Redis and
    start it empty, and let the worker go on (started again if it exited: its code in ``exits``).
    Returns those orders: Redis held the only copy of their work."""
    queue = system.env["CELERY_QUEUE"]
    connections_before = broker_connections(system)
    system.signal("worker", signal.SIGSTOP)  # the bridge goes on handing tasks to Redis
    try:
        wait_until(lambda: system.redis.fetches_waiting() == 0, timeout=30, interval=0.05, message="the frozen worker's fetch never ended")
        meanwhile()
        lost = wait_until(backlog, timeout=60, interval=0.2, message="no backlog of tasks in Redis")
        system.redis.kill()
        system.redis.start()
        assert system.redis.queue_length(queue) == 0
    finally:
        system.signal("worker", signal.SIGCONT)
    if (code := supervise_worker(system, connections_before=connections_before)) is not None:
        exits.append(code)
    return lost


def test_redis_killed_and_started_empty_while_a_backlog_is_queued(system):
    queue = system.env["CELERY_QUEUE"]
    lost: set[str] = set()
    exits: list[int] = []

    def backlog() -> set[str] | None:
        orders = system.redis.queued_chain_orders(queue)
        return orders if len(orders) >= 10 else None

    def inject(load):
        lost.update(lose_redis_with_a_backlog(system, backlog=backlog, exits=exits))

    run_fault(system, redis_fault_name("Celery broker (Redis) SIGKILL with a backlog queued, started empty", exits), inject)
    print(f"{len(lost)} orders had their chain task in the lost backlog")
    assert_redriven(system, lost)


def test_redis_down_a_few_seconds_while_orders_flow(system):
    queue = system.env["CELERY_QUEUE"]
    lost: set[str] = set()
    loads: list[OrderLoad] = []
    exits: list[int] = []

    def inject(load):
        connections_before = broker_connections(system)
        accepted_before = set(load.accepted)
        lost.update(system.redis.queued_chain_orders(queue))
        system.redis.kill()
        time.sleep(2.5)
        system.redis.start()
        # Orders taken while the Celery broker was away: the API does not need it.
        assert set(load.accepted) - accepted_before
        loads.append(load)
        if (code := supervise_worker(system, connections_before=connections_before)) is not None:
            exits.append(code)

    run_fault(system, redis_fault_name("Celery broker (Redis) down 2.5 s, started empty", exits), inject)
    load = loads[0]
    # A chain step that ran during the outage committed, but the worker could not publish the
    # next one (charge_payment) and gave up: the order stays PROCESSING until re-driven.
    refused = refused_callback_orders(system) & set(load.accepted)
    print(f"lost with Redis: {len(lost)} queued chain tasks; refused callback publishes: {len(refused)}")
    assert_redriven(system, lost | refused)


# --- Cancellations and refunds under faults (issue 22) --------------------------------------------
# The audit above also checks the money of every order: what the gateway's ledger kept of it
# (approved charges less approved refunds) is what the order says it kept, no refund is approved
# twice or beyond its charge (devtools.harness.audit.money_audit).


def paid_orders(system, count: int) -> tuple[str, ...]:
    """``count`` orders posted and paid before the fault (the seeded gateway approves their charge)."""
    order_ids = []
    while len(approved := [o for o in order_ids if GATEWAY.would_approve(idempotency_key=f"{o}:1")]) < count:
        order_ids.append(post_order(system.base_url, user_id=f"refunding_{len(order_ids)}"))
    wait_until(
        lambda: Order.objects.filter(pk__in=approved, status=OrderStatus.PAID).count() == count,
        timeout=120,
        interval=0.2,
        message=f"{count} orders not paid",
    )
    return tuple(approved)


def ask_refund(system, order_id: str, amount: Decimal | None = None) -> tuple[int, dict]:
    return post_json(
        f"{system.base_url}/orders/{order_id}/refunds",
        {} if amount is None else {"amount": str(amount)},
        headers={"Idempotency-Key": f"refund-{uuid.uuid4()}"},
    )


def refund_orders(system, order_ids: list[str]) -> dict[str, tuple[str, Decimal]]:
    """Ask for a refund of each order over HTTP: every other one in full, the rest 10.00; what each
    order is to end as, with the amount refunded."""
    expected = {}
    for index, order_id in enumerate(order_ids):
        amount = None if index % 2 == 0 else Decimal("10.00")
        status, answer = ask_refund(system, order_id, amount)
        assert status == 202, answer
        if amount is None:
            expected[order_id] = (OrderStatus.REFUNDED, Payment.objects.get(order_id=order_id, status="APPROVED").amount)
        else:
            expected[order_id] = (OrderStatus.PARTIALLY_REFUNDED, amount)
    return expected


def assert_refunded_as_asked(expected: dict[str, tuple[str, Decimal]]) -> None:
    """Each order ended as its refund asked, with exactly one refund in the gateway's ledger."""
    for order_id, (status, amount) in expected.items():
        payment = Payment.objects.select_related("order").get(order_id=order_id, status="APPROVED")
        assert (payment.order.status, payment.refunded_amount) == (status, amount), order_id
        assert SimulatedRefund.objects.filter(charge_reference=payment.gateway_reference).count() == 1, order_id


def test_worker_killed_during_a_refund_and_another_started(system):
    orders = paid_orders(system, 10)
    expected: dict[str, tuple[str, Decimal]] = {}

    def refunds_under_way() -> set[str]:
        """Keys of refunds the gateway recorded but whose answer no worker has yet (it takes 150 ms)."""
        keys = Refund.objects.filter(order_id__in=orders, status=RefundStatus.REQUESTED).values_list("idempotency_key", flat=True)
        return set(SimulatedRefund.objects.filter(idempotency_key__in=list(keys)).values_list("idempotency_key", flat=True))

    def in_flight(load) -> set[str]:
        expected.update(refund_orders(system, orders))
        return wait_until(refunds_under_way, timeout=30, interval=0.01, message="no refund in flight")

    in_flight_keys = kill_worker_mid_call(
        system, "worker SIGKILL during a refund", in_flight=in_flight, task=REFUND_PAYMENT, orders=orders
    )
    assert_refunded_as_asked(expected)
    # The killed worker's refund was made again under its key by the other worker: the gateway
    # answered with the refund it had recorded, and made no second one.
    calls = dict(SimulatedRefund.objects.filter(idempotency_key__in=in_flight_keys).values_list("idempotency_key", "calls"))
    assert max(calls.values()) >= 2, calls


def test_redis_killed_and_started_empty_while_refunds_are_queued(system):
    queue = system.env["CELERY_QUEUE"]
    expected: dict[str, tuple[str, Decimal]] = {}
    lost: set[str] = set()
    exits: list[int] = []

    def queued_refunds() -> set[str] | None:
        orders = system.redis.queued_chain_orders(queue, tasks=(REFUND_PAYMENT,))
        return orders if orders >= set(expected) else None

    orders = paid_orders(system, 8)

    def inject(load):
        def ask_refunds():
            expected.update(refund_orders(system, orders))

        lost.update(lose_redis_with_a_backlog(system, backlog=queued_refunds, exits=exits, meanwhile=ask_refunds))

    run_fault(
        system, redis_fault_name("Celery broker (Redis) SIGKILL with refunds queued, started empty", exits), inject, before=1.0, orders=orders
    )
    # Every refund completed: the reconciler re-drove each lost REFUND_REQUESTED.
    assert_refunded_as_asked(expected)
    assert_redriven(system, lost)
    redriven = Redrive.objects.filter(order_id__in=lost, event_type=REFUND_REQUESTED, requested_by="reconciler")
    assert {str(order_id) for order_id in redriven.values_list("order_id", flat=True)} == lost


# The slow gateway of the cancellation race: 600 ms a charge, so cancels can land all through it;
# a worker with 8 threads keeps up with the load.
RACE_LATENCY = 0.6
RACE_ORDERS = 24
# Each cancelled order's cancel arrives at one of these moments: right after the 201 (before any
# charge), at 0 .. 1 of the charge's latency after its attempt was opened, or once its outcome is
# recorded (a charge step records its orders' outcomes together, once all their calls returned).
# The orders take the moments in turn, so the first ones come round twice: four orders are
# cancelled after their outcome, so that one at least was approved (at 85% a charge).
BEFORE_CHARGE, AFTER_OUTCOME = "before the charge", "after its outcome"
RACE_MOMENTS = (AFTER_OUTCOME, AFTER_OUTCOME, BEFORE_CHARGE, *(RACE_LATENCY * step / 9 for step in range(10)))


def restart_worker(system, **env: str) -> None:
    """Stop the worker and start it with ``env``; returns once it is connected to Redis."""
    connections_before = broker_connections(system)
    system.stop("worker")
    system.start("worker", **env)
    wait_until(lambda: broker_connections(system) > connections_before, timeout=60, message="the worker did not connect to Redis")


def test_cancels_arriving_at_every_moment_of_a_charge(system):
    answers: dict[str, int] = {}

    def cancel(order_id: str) -> None:
        answers[order_id] = post_json(f"{system.base_url}/orders/{order_id}/cancel", {"reason": "changed my mind"})[0]

    def inject(load):
        first = len(load.accepted)
        moments: dict[str, float | str | None] = {}  # the orders to cancel; None once their cancel is timed
        timers: list[threading.Thread] = []

        def cancel_in(order_id: str, delay: float) -> None:
            timers.append(threading.Timer(max(0.0, delay), cancel, args=(order_id,)))
            timers[-1].start()
            moments[order_id] = None

        def time_cancels() -> bool:
            for order_id in load.accepted[first : first + RACE_ORDERS]:
                if order_id not in moments:
                    moments[order_id] = RACE_MOMENTS[len(moments) % len(RACE_MOMENTS)]
                    if moments[order_id] == BEFORE_CHARGE:
                        cancel_in(order_id, 0.0)
            waiting = [order_id for order_id, moment in moments.items() if moment is not None]
            attempts = Payment.objects.filter(order_id__in=waiting, attempt=1)
            for order_id, opened, status in attempts.values_list("order_id", "created_at", "status"):
                moment = moments[str(order_id)]
                if moment != AFTER_OUTCOME:
                    # The attempt is committed just before the gateway is called: the charge's start.
                    cancel_in(str(order_id), opened.timestamp() + moment - time.time())
                elif status != PaymentStatus.PENDING:
                    cancel_in(str(order_id), 0.0)
            return len(moments) == RACE_ORDERS and all(moment is None for moment in moments.values())

        wait_until(time_cancels, timeout=120, interval=0.02, message="the orders to cancel were not all charged")
        for timer in timers:
            timer.join()

    restart_worker(system, PAYMENTS_LATENCY_MS=str(int(RACE_LATENCY * 1000)), CELERY_CONCURRENCY="8")
    try:
        run_fault(system, f"{RACE_ORDERS} orders cancelled at every moment of a {RACE_LATENCY:g} s charge", inject, before=1.0, after=1.0)
    finally:
        restart_worker(system)
    assert len(answers) == RACE_ORDERS and set(answers.values()) <= {200, 202}, Counter(answers.values())
    assert Counter(Order.objects.filter(pk__in=list(answers)).values_list("status", flat=True)) == {OrderStatus.CANCELLED: RACE_ORDERS}
    # The race was run: cancels landed before the charge, while it was under way (the charge then
    # approved and refunded in full, or declined), and after it.
    cancellations = Cancellation.objects.filter(order_id__in=list(answers))
    assert set(cancellations.values_list("answered_status", flat=True)) == {OrderStatus.CANCELLED, OrderStatus.CANCELLING}
    assert cancellations.filter(from_status=OrderStatus.PAID).exists()
    approved_while_cancelling = OrderTimelineEntry.objects.filter(
        order_id__in=list(answers), event_type="PAYMENT_AFTER_CANCELLATION", message__startswith="Payment approved"
    )
    assert approved_while_cancelling.exists()
    print(
        "cancellations (from, answered):",
        Counter(cancellations.values_list("from_status", "answered_status")),
        f"charges approved after the cancel: {approved_while_cancelling.count()}",
    )
    assert Refund.objects.filter(order_id__in=list(answers), requested_by="cancellation", status=RefundStatus.SUCCEEDED).exists()


def test_overload_outliving_the_old_limit_on_late_work_is_waited_for_not_redriven(system):
    """A backlog that outlives the reconciler's old 120 s limit on late work, on Redis: it drains,
    and nothing is re-driven (devtools.harness.overload)."""
    restart_worker(system, **THROTTLE)
    try:
        overload = run_overload(system, gateway=GATEWAY)
    finally:
        restart_worker(system)
    assert_waited_for_not_redriven(overload)


CONCURRENT_REFUNDS = 20


def test_concurrent_partial_refunds_whose_sum_exceeds_the_charge(system):
    (order_id,) = paid_orders(system, 1)
    charge = Payment.objects.get(order_id=order_id, status="APPROVED").amount
    # Seven of these would cover the charge: twenty ask for about three times it.
    amount = (charge / 7).quantize(Decimal("0.01"), rounding=ROUND_UP)
    answers: list[tuple[int, dict]] = []

    def inject(load):
        start = threading.Barrier(CONCURRENT_REFUNDS)

        def ask():
            start.wait()
            answers.append(ask_refund(system, order_id, amount))

        clients = [threading.Thread(target=ask) for _ in range(CONCURRENT_REFUNDS)]
        for client in clients:
            client.start()
        for client in clients:
            client.join()

    run_fault(system, f"{CONCURRENT_REFUNDS} concurrent partial refunds of one charge, 3x its amount", inject, before=1.0, orders=(order_id,))
    # Every client got a definite answer; as many were accepted as fit in the charge, one after the other.
    assert len(answers) == CONCURRENT_REFUNDS and {code for code, _body in answers} <= {202, 409}, answers
    accepted = [body for code, body in answers if code == 202]
    assert len(accepted) == charge // amount, (charge, amount, len(accepted))
    assert {Decimal(body["amount"]) for body in accepted} == {amount}
    payment = Payment.objects.select_related("order").get(order_id=order_id, status="APPROVED")
    assert payment.refunded_amount == payment.refund_reserved == amount * len(accepted) <= charge
    assert payment.order.status == (OrderStatus.REFUNDED if payment.refunded_amount == charge else OrderStatus.PARTIALLY_REFUNDED)
    ledger = SimulatedRefund.objects.filter(charge_reference=payment.gateway_reference, approved=True)
    assert ledger.count() == len(accepted) and sum(r.amount for r in ledger) == payment.refunded_amount


def _sigkill_and_restart(system, victim: str, *, down: float) -> None:
    if victim == "kafka":
        system.kafka.process.kill()  # may lose messages it acknowledged (see docs/reliability.md)
        system.kafka.process.wait()
        time.sleep(down)
        system.kafka.start()
    else:
        system.kill(victim)
        time.sleep(down)
        system.start(victim)


def test_chaos_random_sigkills_of_relay_bridge_worker_and_kafka(system):
    """For two minutes one of relay, bridge, worker and the Kafka broker is SIGKILLed every 5-15 s
    and started again 0.5-3 s later, while orders are posted. The sequence comes from a seeded
    random generator: FAULT_CHAOS_SEED=<seed> replays a run's kills (not its timing)."""
    rng = random.Random(CHAOS_SEED)
    kills: list[tuple[float, str, float]] = []

    def inject(load):
        started = time.monotonic()
        while (remaining := CHAOS_SECONDS - (time.monotonic() - started)) > 0:
            time.sleep(min(rng.uniform(5.0, 15.0), remaining))  # the schedule, not a wait for a state
            victim, down = rng.choice(CHAOS_VICTIMS), rng.uniform(0.5, 3.0)
            at = time.monotonic() - started
            _sigkill_and_restart(system, victim, down=down)
            kills.append((round(at, 1), victim, round(down, 1)))
            print(f"chaos seed {CHAOS_SEED}: +{at:5.1f} s SIGKILL {victim}, started again {down:.1f} s later", flush=True)

    def name() -> str:
        victims = Counter(victim for _at, victim, _down in kills)
        return (
            f"chaos, 2 min: {len(kills)} SIGKILLs every 5-15 s (seed {CHAOS_SEED}: "
            + ", ".join(f"{victims[v]} {v}" for v in CHAOS_VICTIMS)
            + ")"
        )

    try:
        run_fault(system, name, inject)
    finally:
        print(f"chaos seed {CHAOS_SEED}, kills (s from start, process, s down): {kills}")


def test_restore_drill_pg_dump_restored_into_a_new_database(system, tmp_path):
    """The restore drill (devtools.harness.restore_drill) on PostgreSQL: pg_dump taken while orders
    flow, pg_restore into a new database on the same server, every process started again on it;
    Kafka and Redis keep what they held. The suite's processes come back on the test database."""
    database = connection.settings_dict
    restored = {**database, "NAME": f"{database['NAME']}_restored"}
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{restored["NAME"]}"')
        cursor.execute(f'CREATE DATABASE "{restored["NAME"]}"')
    stack = ProcessGroupStack(system)
    try:
        audit = run_drill(stack, database=database, restored=restored, backup=tmp_path / "backup.dump")
    finally:
        stack.stop(PROCESSES)
        system.start_system(port=int(system.env["HTTP_PORT"]))
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{restored["NAME"]}" WITH (FORCE)')
    assert_came_back_whole(audit, recovery_bound=RECOVERY_BOUND)
