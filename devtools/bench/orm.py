"""In-process measurements: the ORM-only baseline (create_order without HTTP) and the query
census (SQL statements and transactions per request and per task)."""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from devtools.bench.env import SOURCE, seed_items, seed_order


def _create_one(items: list[dict]) -> None:
    from orders.services import create_order

    create_order(
        user_id=seed_order()["user_id"],
        email=seed_order()["email"],
        items=items,
        correlation_id=str(uuid.uuid4()),
        idempotency_key=f"bench-orm-{uuid.uuid4().hex}",
    )


def create_loop(*, duration: float, start_at: float) -> int:
    """Orders created back to back for ``duration`` s from ``start_at`` (a time.time())."""
    time.sleep(max(0.0, start_at - time.time()))
    deadline = time.perf_counter() + duration
    count = 0
    while time.perf_counter() < deadline:
        _create_one(seed_items())
        count += 1
    return count


def _serve(commands, results) -> None:
    """A load process on the ORM-only database: Django set up and warm once, then one
    create_order loop per command."""
    import os

    from devtools.bench.env import ORM_DATABASE_URL, setup_django

    os.environ["DATABASE_URL"] = ORM_DATABASE_URL
    setup_django()
    try:
        _create_one(seed_items())  # warm: connection, imports, first-query caches
        results.put("ready")
        while (command := commands.get()) is not None:
            duration, start_at = command
            results.put(create_loop(duration=duration, start_at=start_at))
    finally:
        from django.db import connections

        connections.close_all()


class OrmLoad:
    """``processes`` spawned processes running create_order loops on request, on the ORM-only
    database (``devtools.bench.env.ORM_DATABASE_URL``, same server).

    Started once, they can measure the baseline in short slices that alternate with, or bracket,
    another measurement, each slice on the same warm processes. Idle between slices, they use no CPU.
    """

    def __init__(self, processes: int, *, start_timeout: float = 60.0):
        context = multiprocessing.get_context("spawn")
        self.results = context.Queue()
        self.commands = [context.Queue() for _ in range(processes)]
        self.children = [context.Process(target=_serve, args=(queue, self.results), daemon=True) for queue in self.commands]
        for child in self.children:
            child.start()
        for _ in self.children:
            self.results.get(timeout=start_timeout)

    def run(self, duration: float) -> dict[str, Any]:
        # Every process starts its loop at the same moment.
        start_at = time.time() + 0.2
        for queue in self.commands:
            queue.put((duration, start_at))
        counts = [self.results.get(timeout=duration + 60) for _ in self.children]
        total = sum(counts)
        return {"processes": len(self.children), "orders": total, "per_process": counts, "duration_s": duration,
                "rate": total / duration}

    def close(self) -> None:
        for queue in self.commands:
            queue.put(None)
        for child in self.children:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
                child.join(timeout=5)

    def __enter__(self) -> "OrmLoad":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class QueryCensus:
    """Counts SQL statements by kind and transactions on the default connection.

    A transaction is either an ``atomic()`` block that commits or a statement run in autocommit;
    it is a write transaction if it ran an INSERT, UPDATE or DELETE.
    """

    WRITES = ("INSERT", "UPDATE", "DELETE")

    def __init__(self):
        self.counts: Counter = Counter()
        self._dirty = False
        self._connection = None
        self._original_commit = None
        self._wrapper_cm = None

    def _wrapper(self, execute, sql, params, many, context):
        kind = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "?"
        connection = context["connection"]
        self.counts["statements"] += 1
        self.counts[f"sql_{kind.lower()}"] += 1
        if connection.in_atomic_block:
            if kind in self.WRITES:
                self._dirty = True
        else:
            self.counts["transactions"] += 1
            if kind in self.WRITES:
                self.counts["write_transactions"] += 1
        return execute(sql, params, many, context)

    def _commit(self):
        self.counts["transactions"] += 1
        self.counts["commits"] += 1
        if self._dirty:
            self.counts["write_transactions"] += 1
        self._dirty = False
        return self._original_commit()

    def __enter__(self) -> QueryCensus:
        from django.db import connections

        self._connection = connections["default"]
        self._connection.ensure_connection()
        self._original_commit = self._connection.commit
        self._connection.commit = self._commit  # instance attribute: what atomic() calls on exit
        self._wrapper_cm = self._connection.execute_wrapper(self._wrapper)
        self._wrapper_cm.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._wrapper_cm.__exit__(*exc)
        del self._connection.commit

    def snapshot(self) -> Counter:
        return Counter(self.counts)


def _measure(census: QueryCensus, operation, calls: list, *, orders_in=lambda call: 1) -> dict[str, Any]:
    """Statements and time per order: ``orders_in(call)`` says how many orders a call handles."""
    before = census.snapshot()
    started = time.perf_counter()
    for call in calls:
        operation(call)
    elapsed = time.perf_counter() - started
    delta = census.snapshot() - before
    n = sum(orders_in(call) for call in calls)
    result = {key: round(value / n, 2) for key, value in sorted(delta.items())}
    result["ms_per_call"] = round(elapsed / n * 1000, 2)
    result["calls"] = n
    return result


def prepared_orders(count: int) -> list[dict[str, Any]]:
    """``count`` orders created through the service, with their ORDER_CREATED event."""
    from events.contract import Event
    from events.models import OutboxEvent
    from orders.services import create_order

    orders = []
    for _ in range(count):
        creation = create_order(
            user_id=seed_order()["user_id"],
            email=seed_order()["email"],
            items=seed_items(),
            correlation_id=str(uuid.uuid4()),
            idempotency_key=f"bench-census-{uuid.uuid4().hex}",
        )
        event = OutboxEvent.objects.get(key=str(creation.order.id), event_type="ORDER_CREATED")
        orders.append({"order_id": creation.order.id, "event": Event(event.payload)})
    return orders


def order_events(order_id, event_types: tuple[str, ...]) -> list:
    """The order's outbox events of ``event_types``, in the order they were written, as the
    workers receive them."""
    from events.contract import Event
    from events.models import OutboxEvent

    return [
        Event(event.payload)
        for event in OutboxEvent.objects.filter(key=str(order_id), event_type__in=event_types).order_by("id")
    ]


@contextlib.contextmanager
def quiet_stdout(log_path: Path | None):
    """The console email backend prints every email; send them to a file."""
    stream = log_path.open("a") if log_path else io.StringIO()
    try:
        with contextlib.redirect_stdout(stream):
            yield
    finally:
        stream.close()


PROCESS_STEP = "process_orders: start_processing_together (per order, chunks of 20)"
CHARGE_STEP = "charge_payments: charge_orders (per order, chunks of 20)"
NOTIFY_STEP = "send_notifications_batch: send_batch (per event, chunks of 20)"


def query_census(*, count: int, log_path: Path | None) -> dict[str, Any]:
    """SQL statements and transactions per call of each step of an order's life, in-process."""
    from rest_framework.test import APIClient

    from devtools.bench.httpload import order_body
    from notifications.services import send_batch
    from messaging.routes import in_chunks
    from orders.services import create_order, start_processing_together
    from payments.services import charge_orders

    client = APIClient()
    results: dict[str, Any] = {}
    with quiet_stdout(log_path), QueryCensus() as census:
        _create_one(seed_items())  # warm
        results["create_order (service)"] = _measure(
            census,
            lambda _: create_order(
                user_id=seed_order()["user_id"],
                email=seed_order()["email"],
                items=seed_items(),
                correlation_id=str(uuid.uuid4()),
                idempotency_key=f"bench-census-{uuid.uuid4().hex}",
            ),
            list(range(count)),
        )

        def post(_):
            response = client.post(
                "/orders", data=order_body(), content_type="application/json", HTTP_IDEMPOTENCY_KEY=f"bench-c-{uuid.uuid4().hex}"
            )
            assert response.status_code == 201, response.content

        post(None)  # warm: URL resolver, DRF's first request
        results["POST /orders (DRF test client)"] = _measure(census, post, list(range(count)))
        orders = prepared_orders(count)
        # The service calls the process_orders and charge_payments tasks make for the ORDER_CREATED
        # of a bridge batch, in chunks as the bridge makes them; figures per order.
        batches = in_chunks(sorted((o["event"] for o in orders), key=lambda event: str(event.order_id)))
        results[PROCESS_STEP] = _measure(census, lambda batch: start_processing_together(events=batch, source=SOURCE), batches, orders_in=len)
        results[CHARGE_STEP] = _measure(census, lambda batch: charge_orders(events=batch, source=SOURCE), batches, orders_in=len)
        events = [
            event
            for o in orders
            for event in order_events(o["order_id"], ("ORDER_CREATED", "ORDER_PROCESSING", "ORDER_PAID", "PAYMENT_FAILED"))
        ]
        results[NOTIFY_STEP] = _measure(census, lambda batch: send_batch(events=batch), in_chunks(events), orders_in=len)
    return results


def census_per_order(census: dict[str, Any]) -> dict[str, float]:
    """Statements and transactions one order needs in the workers' and web's code (relay excluded)."""
    steps = {
        "POST /orders (DRF test client)": 1,
        PROCESS_STEP: 1,
        CHARGE_STEP: 1,
        NOTIFY_STEP: 3,
    }
    total: Counter = Counter()
    for step, times in steps.items():
        for key in ("statements", "transactions", "write_transactions", "sql_select", "sql_insert", "sql_update", "sql_savepoint"):
            total[key] += census[step].get(key, 0) * times
    return {key: round(value, 1) for key, value in total.items()}
