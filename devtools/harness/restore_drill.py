"""The restore drill (issue 25): a backup taken while orders flow, more orders, cancels and refunds
after it, every process stopped while Kafka and the Celery broker keep what they hold, the backup
restored into a fresh database, every process started on it, and an audit of what came back.

The tests run it on processes of their own (``ProcessGroupStack``), ``bin/restore-drill`` on a
running ``bin/run-local`` (devtools/restore_drill.py). ``audit_problems`` says what failed.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.utils import load_backend
from django.utils import timezone

from devtools.harness.audit import money_audit
from devtools.harness.faults import fault_order_body
from devtools.harness.load import OrderLoad
from devtools.harness.process_group import ProcessGroup, url_of_database
from devtools.harness.sample_orders import post_json, post_order
from devtools.harness.waiting import wait_until
from events.models import DeadLetter, OutboxEvent
from orders.models import Order, OrderStatus
from orders.services import TERMINAL_STATUSES
from orders_project.config import BASE_DIR
from payments.models import Refund, RefundStatus, SimulatedCharge, SimulatedRefund
from payments.selectors import CHARGE_WITHOUT_PAYMENT, REFUND_UNKNOWN
from recovery.backups import backup_database, restore_database
from recovery.models import Redrive

# The processes of the system, as run-local runs them; the bridge stops first (below).
PROCESSES = ("web", "relay", "bridge", "worker", "webhook-worker", "reconciler")
RESTORED = "restored"  # the alias the drill reads the restored database under
RATE = 4.0  # orders per second
# The backup is taken once this many orders are finished and some are still in flight.
TERMINAL_BEFORE_BACKUP = 10
POSTED_AFTER_BACKUP = 12
CHANGED_AFTER_BACKUP = 3  # orders cancelled, and as many refunded, after the backup
# Orders posted while the bridge is stopped: their events are in Kafka, never read, and unknown to
# the restored database.
POSTED_WHILE_BRIDGE_STOPPED = 4
# The bridge dead-letters an event its outbox does not hold with this reason (events.contract).
UNKNOWN_EVENT = "unknown_event"
# What the drill waits for before the restore, and after it (the reconciler re-drives an order
# left CREATED or PROCESSING by the restore 30 s or 45 s after its last change, then backs off).
SETTLE_TIMEOUT = 120.0
RECOVERY_TIMEOUT = 240.0


class Stack(Protocol):
    """The running system the drill works on."""

    base_url: str
    # The environment of a manage.py command against the stack's database (the restored one after
    # ``restart_on``).
    env: dict[str, str]

    def stop(self, names: Sequence[str]) -> None:
        """Stop these processes (SIGTERM) and return once they are stopped."""

    def restart_on(self, database: dict[str, Any]) -> None:
        """Start every stopped process on ``database`` (a DATABASES entry), migrating first as
        every start does; return once web answers."""


class ProcessGroupStack:
    """The tests' stack: ``group``'s processes (devtools.harness.process_group), started again on
    the restored database as a new group with the same Kafka consumer group and Celery queues, its
    logs in ``restored/`` under the first one's."""

    def __init__(self, group: ProcessGroup):
        self.group = group

    @property
    def base_url(self) -> str:
        return self.group.base_url

    @property
    def env(self) -> dict[str, str]:
        return self.group.env

    def stop(self, names: Sequence[str]) -> None:
        for name in names:
            if name in self.group.processes:
                self.group.stop(name)

    def restart_on(self, database: dict[str, Any]) -> None:
        log_dir = self.group.log_dir / "restored"
        log_dir.mkdir(exist_ok=True)
        self.group = ProcessGroup(env={**self.group.env, "DATABASE_URL": url_of_database(database)}, log_dir=log_dir)
        manage("migrate", "--noinput", env=self.env)
        self.group.start_system(port=int(self.env["HTTP_PORT"]))


def manage(*args: str, env: dict[str, str]) -> str:
    """A manage.py command's output (stdout); its errors raise."""
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"manage.py {' '.join(args)} exited with {result.returncode}: {result.stderr[-2000:]}")
    return result.stdout


@contextmanager
def database_alias(alias: str, database: dict[str, Any]) -> Iterator[str]:
    """``database`` readable under ``alias`` for the length of the block (the ORM's ``using``):
    a connection made here, not a DATABASES entry, so that a test allows it as made by itself."""
    connection = load_backend(database["ENGINE"]).DatabaseWrapper(copy.deepcopy(database), alias)
    connections[alias] = connection
    try:
        yield alias
    finally:
        connection.close()
        if hasattr(connection, "close_pool"):  # PostgreSQL's: its pooled connections too
            connection.close_pool()
        del connections[alias]


def unfinished(*, using: str, order_ids: Sequence[str] | None = None) -> list[str]:
    """Orders not in a terminal state, or with a refund still requested."""
    orders = Order.objects.using(using)
    refunds = Refund.objects.using(using).filter(status=RefundStatus.REQUESTED)
    if order_ids is not None:
        orders, refunds = orders.filter(pk__in=order_ids), refunds.filter(order_id__in=order_ids)
    pending = orders.exclude(status__in=TERMINAL_STATUSES).values_list("pk", flat=True)
    return sorted({str(pk) for pk in pending} | {str(pk) for pk in refunds.values_list("order_id", flat=True)})


def change_orders(base_url: str, order_ids: list[str]) -> list[str]:
    """Cancel ``CHANGED_AFTER_BACKUP`` paid orders of ``order_ids`` (a list that grows: orders
    still being posted), refund as many others (in full, then 10.00, alternately); the ids of the
    refunds this asked for."""

    def enough_paid() -> list[str] | None:
        paid = Order.objects.filter(pk__in=list(order_ids), status=OrderStatus.PAID).values_list("pk", flat=True)
        return [str(pk) for pk in paid] if len(paid) >= 2 * CHANGED_AFTER_BACKUP else None

    paid = wait_until(enough_paid, timeout=SETTLE_TIMEOUT, interval=0.2, message="not enough orders paid to cancel and refund")
    refund_ids = []
    for order_id in paid[:CHANGED_AFTER_BACKUP]:
        status, answer = post_json(f"{base_url}/orders/{order_id}/cancel", {"reason": "restore drill"})
        assert status == 202, answer
        refund_ids.append(answer["refund"]["id"])
    for index, order_id in enumerate(paid[CHANGED_AFTER_BACKUP : 2 * CHANGED_AFTER_BACKUP]):
        body = {} if index % 2 == 0 else {"amount": "10.00"}
        status, answer = post_json(
            f"{base_url}/orders/{order_id}/refunds", body, headers={"Idempotency-Key": f"drill-{uuid.uuid4()}"}
        )
        assert status == 202, answer
        refund_ids.append(answer["id"])
    return refund_ids


def reconcile_payments(env: dict[str, str]) -> set[tuple[str, str]]:
    """What ``manage.py reconcile_payments`` lists against the database ``env`` names: (kind,
    the provider's reference) of each line."""
    return {(line["kind"], line["reference"]) for line in map(json.loads, manage("reconcile_payments", env=env).splitlines())}


@dataclass(frozen=True)
class BeforeRestore:
    """What the drill did and saw before the restore."""

    began: dt.datetime
    # The orders that got a 201, in that order; the first ``accepted_before_backup`` before the backup.
    posted: list[str]
    accepted_before_backup: int
    refunds_asked: list[str]  # after the backup, by the cancels and refunds
    unread_orders: list[str]  # posted while the bridge was stopped
    unread_events: set[str]  # published while the bridge was stopped
    rpo_s: float  # from the backup to the stop


def run_drill(stack: Stack, *, database: dict[str, Any], restored: dict[str, Any], backup: Path) -> dict[str, Any]:
    """The drill on ``stack``, whose database is ``database``: backed up to ``backup`` and restored
    into ``restored`` (a fresh database; on run-local, its own file). Returns the audit."""
    before = work_then_stop(stack, database=database, backup=backup)
    connections[DEFAULT_DB_ALIAS].close()  # on run-local the database is about to be replaced
    restore_database(database=restored, source=backup)
    with database_alias(RESTORED, restored) as using:
        unfinished_in_backup = len(unfinished(using=using))
        restarted = time.monotonic()
        stack.restart_on(restored)
        audit = audit_restore(stack, using=using, before=before, restarted=restarted)
    return {"unfinished_in_backup": unfinished_in_backup, **audit}


def work_then_stop(stack: Stack, *, database: dict[str, Any], backup: Path) -> BeforeRestore:
    """Orders posted, the backup taken while some are in flight, more orders, cancels and refunds;
    once all are done, the bridge stopped, orders posted without it, and every process stopped."""
    began = timezone.now()
    load = OrderLoad(base_url=stack.base_url, rate=RATE, body=fault_order_body).start()

    def some_finished_some_in_flight() -> bool:
        accepted = list(load.accepted)
        in_flight = len(unfinished(using=DEFAULT_DB_ALIAS, order_ids=accepted))
        return in_flight > 0 and len(accepted) - in_flight >= TERMINAL_BEFORE_BACKUP

    try:
        wait_until(some_finished_some_in_flight, timeout=SETTLE_TIMEOUT, interval=0.05, message="no moment to take the backup")
        accepted_before_backup = len(load.accepted)
        backup_started = time.monotonic()
        backup_database(database=database, target=backup)  # while orders flow
        refunds_asked = change_orders(stack.base_url, load.accepted)
        wait_until(
            lambda: len(load.accepted) >= accepted_before_backup + POSTED_AFTER_BACKUP,
            timeout=SETTLE_TIMEOUT,
            message="orders not posted after the backup",
        )
    finally:
        load.stop()
    wait_until(
        lambda: not unfinished(using=DEFAULT_DB_ALIAS, order_ids=load.accepted),
        timeout=SETTLE_TIMEOUT,
        interval=0.5,
        message="orders posted, cancelled or refunded after the backup did not finish",
    )
    # Events of orders the restored database will not know, in Kafka and never read: the bridge
    # stops first, these orders are published without it.
    stack.stop(["bridge"])
    bridge_stopped = timezone.now()
    unread_orders = [post_order(stack.base_url, user_id=f"drill_unread_{index}") for index in range(POSTED_WHILE_BRIDGE_STOPPED)]
    wait_until(
        lambda: not OutboxEvent.objects.filter(key__in=unread_orders, published_at__isnull=True).exists(),
        timeout=SETTLE_TIMEOUT,
        message="the relay did not publish the orders posted while the bridge was stopped",
    )
    stack.stop([name for name in PROCESSES if name != "bridge"])
    return BeforeRestore(
        began=began,
        posted=[*load.accepted, *unread_orders],
        accepted_before_backup=accepted_before_backup,
        refunds_asked=refunds_asked,
        unread_orders=unread_orders,
        unread_events={
            str(event_id) for event_id in OutboxEvent.objects.filter(published_at__gte=bridge_stopped).values_list("event_id", flat=True)
        },
        rpo_s=time.monotonic() - backup_started,
    )


def audit_restore(stack: Stack, *, using: str, before: BeforeRestore, restarted: float) -> dict[str, Any]:
    """Waits for the restored system (``using``) to finish every order it knows and for the
    reconciliation to list what it lost, then audits; each list below is a problem when not empty."""
    known = {str(pk) for pk in Order.objects.using(using).values_list("pk", flat=True)}
    lost = [order_id for order_id in before.posted if order_id not in known]
    try:
        wait_until(lambda: not unfinished(using=using), timeout=RECOVERY_TIMEOUT, interval=0.5)
    except TimeoutError:
        pass  # listed as unfinished below
    rto_terminal_s = time.monotonic() - restarted
    # The provider's approved charges and refunds since the drill began (its ledger is in a
    # database of its own, which the restore left as it was) that the restored database cannot
    # know: charges of orders it lacks, refunds it has no row of.
    charges = SimulatedCharge.objects.filter(approved=True, created_at__gte=before.began)
    refunds = SimulatedRefund.objects.filter(approved=True, created_at__gte=before.began)
    known_refunds = {str(pk) for pk in Refund.objects.using(using).values_list("pk", flat=True)}
    # A refund's attempts are keyed refund:<id>:<attempt>.
    lost_refunds = {
        key.split(":")[1]: (reference, charge_reference)
        for key, reference, charge_reference in refunds.values_list("idempotency_key", "reference", "charge_reference")
        if key.split(":")[1] not in known_refunds
    }
    expected = {
        *(
            (CHARGE_WITHOUT_PAYMENT, reference)
            for reference, order_id in charges.values_list("reference", "order_id")
            if order_id not in known
        ),
        *((REFUND_UNKNOWN, reference) for reference, _charge in lost_refunds.values()),
    }
    # Orders the restored database knows whose money moved after the backup: the provider's books
    # and theirs differ by what the reconciliation lists.
    refunded_after_backup = set(
        SimulatedCharge.objects.filter(reference__in=[charge for _ref, charge in lost_refunds.values()])
        .values_list("order_id", flat=True)
    )
    references = {*charges.values_list("reference", flat=True), *refunds.values_list("reference", flat=True)}

    def listed() -> set[tuple[str, str]]:
        return {line for line in reconcile_payments(stack.env) if line[1] in references}

    try:
        wait_until(lambda: listed() == expected, timeout=RECOVERY_TIMEOUT, interval=1.0)
    except TimeoutError:
        pass  # the difference is listed below
    rto_reconciled_s = time.monotonic() - restarted
    listing = listed()
    # The events Kafka holds that the restored outbox does not: each dead-lettered, as unknown.
    expected_dead = before.unread_events - {str(e) for e in OutboxEvent.objects.using(using).values_list("event_id", flat=True)}
    dead_letters = DeadLetter.objects.using(using).filter(received_at__gte=before.began)

    def not_dead_lettered() -> list[str]:
        dead_lettered = dict(dead_letters.values_list("event_id", "reason"))
        return sorted(e for e in expected_dead if dead_lettered.get(e) != UNKNOWN_EVENT)

    try:
        wait_until(lambda: not not_dead_lettered(), timeout=RECOVERY_TIMEOUT, interval=0.5)
    except TimeoutError:
        pass  # listed below
    charged = Counter(charges.values_list("order_id", flat=True))
    refunded = Counter(key.split(":")[1] for key in refunds.values_list("idempotency_key", flat=True))
    return {
        "orders_posted": len(before.posted),
        "orders_known_after_restore": len(known),
        "rpo_orders": len(lost),
        "rpo_s": round(before.rpo_s, 1),
        "lost_before_backup": [order_id for order_id in before.posted[: before.accepted_before_backup] if order_id not in known],
        "rto_terminal_s": round(rto_terminal_s, 1),
        "rto_reconciled_s": round(rto_reconciled_s, 1),
        "orders_redriven": Redrive.objects.using(using).filter(created_at__gte=before.began).values("order").distinct().count(),
        "unfinished": unfinished(using=using),
        "charged_twice": sorted(order_id for order_id, n in charged.items() if n > 1),
        "refunded_twice": sorted(refund_id for refund_id, n in refunded.items() if n > 1),
        "money": money_audit(sorted(known.intersection(before.posted) - refunded_after_backup), using=using),
        "unreconciled_expected": len(expected),
        "unreconciled_not_listed": sorted(ref for _kind, ref in expected - listing),
        "unreconciled_listed_wrongly": sorted(ref for _kind, ref in listing - expected),
        "lost_refunds_not_asked_after_backup": sorted(set(lost_refunds) - set(before.refunds_asked)),
        "dead_letters": dict(Counter(dead_letters.values_list("reason", flat=True))),
        "unread_events_expected_dead": len(expected_dead),
        "unread_events_not_dead_lettered": not_dead_lettered(),
        "unread_orders_created": sorted(set(before.unread_orders) & known),
    }


# The audit's keys whose non-empty value is a failure.
PROBLEMS = (
    "lost_before_backup",
    "unfinished",
    "charged_twice",
    "refunded_twice",
    "money",
    "unreconciled_not_listed",
    "unreconciled_listed_wrongly",
    "lost_refunds_not_asked_after_backup",
    "unread_events_not_dead_lettered",
    "unread_orders_created",
)


def audit_problems(audit: dict[str, Any]) -> dict[str, Any]:
    """The failed lines of the audit (none: the restore came back whole)."""
    return {key: audit[key] for key in PROBLEMS if audit[key]}


def assert_came_back_whole(audit: dict[str, Any], *, recovery_bound: float) -> None:
    """The tests' verdict: no problem line, the losses the drill makes were made and seen, and
    every order finished within ``recovery_bound`` seconds of the restart."""
    print(json.dumps(audit))
    assert not audit_problems(audit), audit
    assert audit["rpo_orders"] >= POSTED_WHILE_BRIDGE_STOPPED, audit
    assert audit["unread_events_expected_dead"] >= POSTED_WHILE_BRIDGE_STOPPED, audit
    # Every refund asked after the backup is one the database lost (the provider keeps it).
    assert audit["unreconciled_expected"] >= 2 * CHANGED_AFTER_BACKUP, audit
    assert audit["rto_terminal_s"] <= recovery_bound, audit
