"""Fault tests of the local default: SQLite, the SQL Celery broker and the bundled in-memory Kafka
broker, as bin/run-local runs them (the first half of CI; marker ``fault_local``).

Here a crash loses work for good: kombu's SQL transport never hands back a task that a SIGKILLed
worker had taken, and the in-memory broker keeps nothing when it dies. The reconciler, with its
default deadlines (config.yaml, ``reconciler``), re-drives what was lost from the database. Each
test posts orders at about 5 a second from a client that re-sends with its Idempotency-Key on
errors, injects one fault, and then audits every order that got a 201 (devtools.harness.audit.audit):
within two minutes of the end of the fault it is PAID or PAYMENT_FAILED (as the seeded gateway
decides) with its 3 notifications, nothing is lost, no order is charged twice, no email is sent
twice for one event, no status repeats in its timeline. Results go to the fault table (conftest).
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from django.db import connection

from devtools.broker import free_port
from devtools.harness.audit import audit_when_complete
from devtools.harness.faults import FAULT_REPORT, fault_order_body, fault_row, inbox_redeliveries, redriven_orders
from devtools.harness.load import OrderLoad
from devtools.harness.overload import THROTTLE, assert_waited_for_not_redriven, run_overload
from devtools.harness.process_group import ProcessGroup, database_environment
from devtools.harness.restore_drill import PROCESSES, ProcessGroupStack, assert_came_back_whole, run_drill
from devtools.harness.run_local import LocalStack
from devtools.harness.waiting import wait_until
from devtools.restore_drill import RunLocalStack
from payments.simulator import SimulatedGateway
from payments.models import Payment

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e, pytest.mark.fault_local]

RATE = 5  # orders per second
PAYMENT_SEED = "local-fault-seed"
GATEWAY = SimulatedGateway(success_rate=0.85, timeout_rate=0.0, seed=PAYMENT_SEED)
# The reconciler's promise with its default deadlines: a stranded order is complete this long
# after the fault ended (re-driven 30 s or 45 s after its last change, a pass every 5 s).
RECOVERY_BOUND = 120.0
# Deterministic payment outcomes; no throttle (5 orders/s is the anonymous limit, 300/minute).
ENV = {"PAYMENTS_SEED": PAYMENT_SEED, "API_THROTTLE_ANON": ""}


def post_through(base_url: str, inject: Callable[[OrderLoad], float | None], *, before: float = 2.0, after: float = 2.0):
    """Post orders for ``before`` seconds, inject the fault, post ``after`` seconds more; returns the
    load and when the fault ended (what ``inject`` returns, or when it returned)."""
    load = OrderLoad(base_url=base_url, rate=RATE, body=fault_order_body).start()
    time.sleep(before)  # the load's schedule, not a wait for a state
    ended = inject(load) or time.monotonic()
    time.sleep(after)
    load.stop()
    return load, ended


def audit_recovery(name: str, load: OrderLoad, ended: float, *, logs: Callable[[], Iterable[Path]], redelivered_before: int) -> dict:
    """Wait until every accepted order is complete (at most ``RECOVERY_BOUND`` s after the fault
    ended), audit them, add the fault table's row, and check that nothing was lost or doubled."""
    result = audit_when_complete(load.accepted, logs=logs(), gateway=GATEWAY, timeout=ended + RECOVERY_BOUND - time.monotonic())
    recover_s = round(time.monotonic() - ended, 1)
    row = fault_row(name=name, load=load, result=result, recover_s=recover_s, redelivered_before=redelivered_before)
    FAULT_REPORT.append(row)
    print(f"{name}: {row}")
    assert not load.unaccepted, f"orders the API never accepted: {len(load.unaccepted)}"
    assert result["lost"] == 0, {key: [str(o) for o in result[key][:5]] for key in ("missing", "unfinished", "unnotified")}
    assert result["double_charged"] == 0, row
    assert result["emails_resent"] == 0, row
    assert result["duplicates"] == 0, row
    assert not result["wrong_outcome"], [str(o.id) for o in result["wrong_outcome"][:5]]
    assert not result["money"], result["money"][:5]
    assert recover_s <= RECOVERY_BOUND, row
    assert row["posted"] >= RATE * 4.0 * 0.5, row
    return row


def kill_mid_payment(load: OrderLoad, kill: Callable[[], None]) -> set[str]:
    """Wait for a charge in flight (a PENDING payment: the gateway is slow), ``kill``; returns the
    orders whose charge was in flight then: the task of each is gone with its worker, so nothing
    but the reconciler will finish them."""

    def in_flight():
        return Payment.objects.filter(status="PENDING", order_id__in=list(load.accepted))

    wait_until(lambda: in_flight().exists(), timeout=30, interval=0.01, message="no payment in flight")
    kill()
    return {str(order_id) for order_id in in_flight().values_list("order_id", flat=True)}


def assert_redriven(stranded: set[str], accepted: list[str], reconciler_events: list[dict]) -> None:
    """The reconciler re-drove each stranded order (recovery.models.Redrive, and its log)."""
    assert stranded, "no order was stranded"
    redriven = redriven_orders(accepted)
    assert stranded <= redriven, f"stranded but not re-driven: {sorted(stranded - redriven)}"
    logged = {e.get("order_id") for e in reconciler_events if e.get("event") == "order_redriven"}
    assert stranded <= logged, f"re-drives not logged: {sorted(stranded - logged)}"


def test_worker_sigkilled_mid_payment_and_its_lost_tasks_redriven(kafka_broker, tmp_path):
    """A worker SIGKILLed while a charge is in flight; another is started. The SQL transport never
    redelivers the tasks the dead worker had taken: only the reconciler can finish those orders."""
    port = free_port()
    system = ProcessGroup.for_tests(
        kafka_brokers=kafka_broker.bootstrap_servers,
        work_dir=tmp_path,
        HTTP_PORT=str(port),
        PAYMENTS_LATENCY_MS="150",  # a charge takes a while: the worker dies in the middle of one
        **ENV,
    )
    stranded: set[str] = set()
    try:
        system.start_system(port=port)
        redelivered_before = inbox_redeliveries()

        def inject(load: OrderLoad) -> None:
            stranded.update(kill_mid_payment(load, lambda: system.kill("worker")))
            system.start("worker_b", command="worker")

        load, ended = post_through(system.base_url, inject)
        audit_recovery(
            "worker SIGKILL mid-payment (SQL Celery broker)",
            load,
            ended,
            logs=lambda: system.log_dir.glob("worker*.log"),
            redelivered_before=redelivered_before,
        )
    finally:
        system.stop_all()
    assert_redriven(stranded, load.accepted, system.log_events("reconciler"))


def test_overload_outliving_the_old_limit_on_late_work_is_waited_for_not_redriven(kafka_broker, tmp_path):
    """A backlog that outlives the reconciler's old 120 s limit on late work, on the SQL transport,
    whose queue the reconciler reads without writing: it drains, and nothing is re-driven."""
    port = free_port()
    system = ProcessGroup.for_tests(kafka_brokers=kafka_broker.bootstrap_servers, work_dir=tmp_path, HTTP_PORT=str(port), **ENV, **THROTTLE)
    try:
        system.start_system(port=port)
        overload = run_overload(system, gateway=GATEWAY)
    finally:
        system.stop_all()
    assert_waited_for_not_redriven(overload)


def test_restore_drill_backup_while_orders_flow_restored_into_a_new_file(kafka_broker, tmp_path):
    """The restore drill (devtools.harness.restore_drill) on SQLite: the backup API's copy, taken
    while orders flow, restored into a new file that the processes are started again on; the
    Kafka broker and the SQL Celery broker keep what they held."""
    port = free_port()
    # A charge takes a while: orders are in flight when the backup is taken.
    system = ProcessGroup.for_tests(
        kafka_brokers=kafka_broker.bootstrap_servers, work_dir=tmp_path, HTTP_PORT=str(port), PAYMENTS_LATENCY_MS="300", **ENV
    )
    database = connection.settings_dict
    stack = ProcessGroupStack(system)
    try:
        system.start_system(port=port)
        audit = run_drill(
            stack, database=database, restored={**database, "NAME": str(tmp_path / "restored.sqlite3")}, backup=tmp_path / "backup.sqlite3"
        )
    finally:
        stack.group.stop_all()
    assert_came_back_whole(audit, recovery_bound=RECOVERY_BOUND)


@pytest.fixture
def run_local(tmp_path):
    """run-local on the test database and free ports; stopped with Ctrl-C at the end, if it runs."""
    # A charge takes 300 ms, so that the kill, which takes longer to deliver here, lands in one.
    stack = LocalStack(work_dir=tmp_path, **database_environment(), PAYMENTS_LATENCY_MS="300", **ENV)
    yield stack
    if stack.process is not None and stack.process.poll() is None:
        assert stack.ctrl_c() == 0, stack.output()[-3000:]


def started(stack: LocalStack) -> Counter:
    return Counter(e["process"] for e in stack.events("process_started", logger="run-local"))


def fault_on_run_local(stack: LocalStack, name: str, inject: Callable[[OrderLoad], float | None]) -> OrderLoad:
    """Post orders to the running ``stack``, inject the fault, then audit the recovery."""
    redelivered_before = inbox_redeliveries()
    load, ended = post_through(stack.base_url, inject)
    audit_recovery(name, load, ended, logs=lambda: stack.logs, redelivered_before=redelivered_before)
    return load


def test_run_local_power_cut_while_orders_are_posted_then_started_again(run_local):
    """run-local, its broker and every process SIGKILLed at once, then run-local started again on
    the same database and Celery broker files. The new broker is empty, the killed worker's tasks
    are gone: every order that got a 201 completes all the same."""
    stack = run_local.start()
    stack.wait_up()
    stranded: set[str] = set()

    def inject(load: OrderLoad) -> float:
        stranded.update(kill_mid_payment(load, stack.power_cut))  # returns once every process is dead
        power_back = time.monotonic()
        stack.start()
        stack.wait_up()
        return power_back

    load = fault_on_run_local(stack, "run-local power cut (SIGKILL of everything), started again", inject)
    assert_redriven(stranded, load.accepted, stack.events(logger="recovery.redrives"))
    assert started(stack) == dict.fromkeys(("web", "relay", "bridge", "reconciler", "worker", "webhook-worker"), 1)


def test_run_local_restarts_a_sigkilled_worker_and_stays_up(run_local):
    stack = run_local.start()
    stack.wait_up()
    stranded: set[str] = set()

    def inject(load: OrderLoad) -> None:
        worker = stack.pid("worker")
        stranded.update(kill_mid_payment(load, lambda: os.kill(worker, signal.SIGKILL)))
        wait_until(lambda: stack.pid("worker") != worker, timeout=30, message="run-local did not restart the worker")

    load = fault_on_run_local(stack, "run-local: worker kill -9, restarted by run-local", inject)
    (exited,) = stack.events("process_exited", logger="run-local")
    assert (exited["process"], exited["exit_code"], exited["restart_in_s"]) == ("worker", -9, 1.0)
    assert "worker" in exited["message"] and "SIGKILL" in exited["message"]
    # Only the worker was started again: the stack stayed up.
    assert started(stack) == {"web": 1, "relay": 1, "bridge": 1, "reconciler": 1, "worker": 2, "webhook-worker": 1}
    assert stack.process.poll() is None
    assert_redriven(stranded, load.accepted, stack.events(logger="recovery.redrives"))


def test_run_local_restarts_a_sigkilled_kafka_broker_and_every_order_completes(run_local):
    stack = run_local.start()
    stack.wait_up()

    def inject(load: OrderLoad) -> None:
        (broker,) = stack.events("kafka_broker_started", logger="run-local")
        os.kill(broker["pid"], signal.SIGKILL)
        wait_until(
            lambda: stack.events("kafka_broker_restarted", logger="run-local"),
            timeout=60,
            message="run-local did not restart the Kafka broker",
        )

    fault_on_run_local(stack, "run-local: Kafka broker kill -9, restarted empty by run-local", inject)
    (exited,) = stack.events("kafka_broker_exited", logger="run-local")
    assert exited["exit_code"] == -9
    restarted = stack.events("kafka_broker_started", logger="run-local")
    assert len(restarted) == 2 and restarted[1]["kafka"] == restarted[0]["kafka"]  # the same port
    assert not stack.events("process_exited", logger="run-local")
    assert started(stack) == {"web": 1, "relay": 2, "bridge": 1, "reconciler": 1, "worker": 1, "webhook-worker": 1}
    assert stack.process.poll() is None


def test_restore_drill_on_run_local(run_local, tmp_path):
    """bin/restore-drill's drill on a running run-local: its processes held stopped and released
    through its hold file while its Kafka broker runs on, its database restored in place."""
    stack = run_local.start()
    stack.wait_up()
    drill = RunLocalStack(base_url=stack.base_url, hold_file=stack.hold_file, env=stack.env)
    database = connection.settings_dict
    audit = run_drill(drill, database=database, restored=database, backup=tmp_path / "backup.sqlite3")
    assert_came_back_whole(audit, recovery_bound=RECOVERY_BOUND)
    held = [e["held"] for e in stack.events("processes_held", logger="run-local")]
    assert held == [["bridge"], sorted(PROCESSES), []], held
    assert len(stack.events("kafka_broker_started", logger="run-local")) == 1  # what it held stayed
    assert stack.process.poll() is None
