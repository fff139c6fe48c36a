"""Overload, shared by the two fault suites (test_faults.py on Redis, test_faults_local.py on kombu's
SQL transport): orders posted several times faster than a throttled pipeline finishes them, until
the backlog is long enough that orders wait longer from their POST to their outcome than the
reconciler's old limit on late work, past which it re-drove them. Such a backlog is late, not
lost: the reconciler must wait for it and re-drive nothing."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet

from devtools.harness.audit import PAYMENT_OUTCOMES, audit_when_complete
from devtools.harness.faults import FAULT_REPORT, fault_order_body, fault_row, inbox_redeliveries
from devtools.harness.load import OrderLoad
from devtools.harness.metrics import sample_total
from devtools.harness.process_group import ProcessGroup
from devtools.harness.waiting import wait_until
from orders.models import Order, OrderStatus, OrderTimelineEntry

# The pipeline throttled to one worker thread and a gateway that takes 2 s per charge (a charge
# step's calls are concurrent, so its rate is about a step's orders every 2 s), so that a modest
# posting rate is several times its rate.
CHARGE_SECONDS = 2.0
THROTTLE = {"CELERY_CONCURRENCY": "1", "PAYMENTS_LATENCY_MS": str(int(CHARGE_SECONDS * 1000))}
RATE = 3.0  # orders posted per second
# The reconciler's max_wait_in_flight before issue 24: an unfinished order whose event was
# published longer ago than this was re-driven, however well the backlog ahead of it drained.
OLD_MAX_WAIT_IN_FLIGHT = 120.0
# Posting stops once the backlog, at the drain rate so far, takes this long to finish: the last
# orders then wait past the old limit whatever the host's speed (the drain quickens a little once
# posting stops, hence the margin). Bounds on the posting: the drain rate is read after the first,
# and the last is a backstop.
EXPECTED_WAIT = 1.4 * OLD_MAX_WAIT_IN_FLIGHT
MIN_POSTING_SECONDS = 20.0
MAX_POSTING_SECONDS = 150.0
# How long the backlog may take to drain before its orders count as lost (not a timed assertion:
# about twice the drain the rates above give).
DRAIN_TIMEOUT = 420.0


class OldestQueuedTask:
    """The longest wait of the oldest task in ``queue``, read every second from the reconciler's
    /metrics (``celery_oldest_queued_task_age_seconds``, refreshed by each of its passes)."""

    def __init__(self, system: ProcessGroup, *, queue: str):
        self.system = system
        self.queue = queue
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> OldestQueuedTask:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                age = sample_total(self.system.metrics("reconciler"), "celery_oldest_queued_task_age_seconds", queue=self.queue)
            except OSError:
                continue  # a read that fails is skipped: the next comes a second later
            if not math.isnan(age):
                self.longest = max(self.longest, age)


@dataclass(frozen=True)
class Overload:
    row: dict[str, Any]
    result: dict[str, Any]
    load: OrderLoad
    oldest_queued_s: float
    drain: Drain


def payment_outcomes(order_ids: list[str]) -> QuerySet[OrderTimelineEntry]:
    """The timeline entries where the orders of ``order_ids`` reached their payment's outcome."""
    return OrderTimelineEntry.objects.filter(order_id__in=order_ids, previous_status=OrderStatus.PROCESSING, status__in=PAYMENT_OUTCOMES)


@dataclass(frozen=True)
class Drain:
    """How the pipeline got through the orders: orders reaching their payment's outcome per second
    while orders were posted (from the first one's creation to the last one's) and after the last
    one, and the longest time from an order's creation to its outcome."""

    during: float
    after: float
    longest_s: float

    @classmethod
    def of(cls, order_ids: list[str]) -> Drain:
        created = dict(Order.objects.filter(pk__in=order_ids).values_list("pk", "created_at"))
        first_posted, last_posted = min(created.values()), max(created.values())
        finished = dict(payment_outcomes(order_ids).values_list("order_id", "created_at"))
        during = sum(1 for at in finished.values() if at <= last_posted)
        after = len(finished) - during
        return cls(
            during=round(during / (last_posted - first_posted).total_seconds(), 2),
            after=round(after / (max(finished.values()) - last_posted).total_seconds(), 2) if after else 0.0,
            longest_s=round(max(((at - created[order_id]).total_seconds() for order_id, at in finished.items()), default=0.0), 1),
        )


def backlog_outlives_the_old_limit(accepted: list[str], *, posting_s: float) -> bool:
    """Whether the orders of ``accepted`` still without their payment's outcome would take
    ``EXPECTED_WAIT`` to finish at the rate the others finished in the ``posting_s`` seconds so far."""
    if posting_s < MIN_POSTING_SECONDS:
        return False
    finished = payment_outcomes(accepted).count()
    backlog = len(accepted) - finished
    return backlog * posting_s >= EXPECTED_WAIT * finished


def run_overload(system: ProcessGroup, *, gateway) -> Overload:
    """Post ``RATE`` orders a second to the throttled ``system`` (its workers run with
    ``THROTTLE``) until its backlog outlives the old limit (``backlog_outlives_the_old_limit``),
    wait for every accepted order to finish, audit them (``gateway``: a SimulatedGateway with the
    processes' seed) and add the fault table's row."""
    redelivered_before = inbox_redeliveries()
    with OldestQueuedTask(system, queue=system.env["CELERY_QUEUE"]) as oldest:
        load = OrderLoad(base_url=system.base_url, rate=RATE, body=fault_order_body).start()
        started = time.monotonic()
        try:
            wait_until(
                lambda: backlog_outlives_the_old_limit(list(load.accepted), posting_s=time.monotonic() - started),
                timeout=MAX_POSTING_SECONDS,
                interval=1.0,
            )
        except TimeoutError:
            pass  # posted for as long as allowed: the assertion on the longest wait says whether it sufficed
        load.stop()
        last_posted = time.monotonic()
        posted_s = last_posted - started
        result = audit_when_complete(
            load.accepted, logs=system.log_dir.glob("worker*.log"), gateway=gateway, timeout=DRAIN_TIMEOUT
        )
        drained_s = round(time.monotonic() - last_posted, 1)
    drain = Drain.of(load.accepted)
    name = (
        f"overload: {RATE:g} orders/s for {posted_s:.0f} s to 1 worker thread with {CHARGE_SECONDS:g} s charges; longest order "
        f"{drain.longest_s:.0f} s, oldest queued task {oldest.longest:.0f} s; drained {drain.during:g} orders/s "
        f"while posted, {drain.after:g} after"
    )
    row = fault_row(name=name, load=load, result=result, recover_s=drained_s, redelivered_before=redelivered_before)
    FAULT_REPORT.append(row)
    print(f"{name}: {row}")
    return Overload(row=row, result=result, load=load, oldest_queued_s=oldest.longest, drain=drain)


def assert_waited_for_not_redriven(overload: Overload) -> None:
    """The backlog outlived the old limit (orders took longer than it from their POST to their
    outcome: the old reconciler re-drove such orders), every order finished once, none was re-driven."""
    result, row = overload.result, overload.row
    assert overload.drain.longest_s > OLD_MAX_WAIT_IN_FLIGHT, f"no order took longer than {OLD_MAX_WAIT_IN_FLIGHT} s: {row}"
    assert not overload.load.unaccepted, f"orders the API never accepted: {len(overload.load.unaccepted)}"
    assert result["lost"] == 0, {key: [str(o) for o in result[key][:5]] for key in ("missing", "unfinished", "unnotified")}
    assert result["duplicates"] == 0, row
    assert not result["wrong_outcome"], [str(o.id) for o in result["wrong_outcome"][:5]]
    assert not result["money"], result["money"][:5]
    assert row["redriven"] == 0, f"late orders re-driven as if lost: {row}"
