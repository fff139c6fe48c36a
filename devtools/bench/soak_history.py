"""``python -m devtools.bench.soak_history [--rounds 30] [--orders 200] [--retention 5]``: history retention soak.

Shows that the reconciler's purge keeps the outbox and the inbox bounded while orders pile up, and
that throughput does not fall as history accumulates. Each round takes ``--orders`` orders through
their whole life in this process, as the relay and the workers would: ``create_order``, the outbox
rows marked published, ``start_processing``, ``charge_order`` (the simulated gateway) and the
notifications of every order event (Django's locmem email backend); then one reconciler pass
(``recovery.reconciler.reconcile``) completes their events and deletes what was completed more than
``--retention`` seconds ago. Each round prints its orders/s, the seconds of the pass, the outbox
and inbox rows left, the rows the pass purged, the orders in all and, on PostgreSQL, the size of the
outbox and inbox tables on disk (deleted rows leave dead tuples, which only (auto)vacuum makes
reusable: run it against a server with autovacuum on, as in production).

The database: PostgreSQL when DATABASE_URL points at it (created if missing, migrated, and its order
tables EMPTIED first, so its name must contain "soak": postgres://postgres@127.0.0.1:5432/orders_soak);
otherwise a fresh SQLite file, var/soak.sqlite3. Results: docs/benchmarks.md, "History retention soak".
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import time
import urllib.parse
import uuid

from devtools.bench.env import BASE_DIR, ORDER_TABLES, SOURCE, ensure_database, seed_items, seed_order

SQLITE_FILE = BASE_DIR / "var" / "soak.sqlite3"
STATUS_EVENTS = ("ORDER_CREATED", "ORDER_PROCESSING", "ORDER_PAID", "PAYMENT_FAILED")


def prepare_database() -> str:
    """Point DATABASE_URL at an empty, migrated soak database; returns a description of it."""
    url = os.environ.get("DATABASE_URL", "")
    postgres = url.startswith(("postgres://", "postgresql://"))
    if postgres:
        name = urllib.parse.urlsplit(url).path.lstrip("/")
        if "soak" not in name:
            raise SystemExit(f"the soak empties the order tables of {name!r}: give it a database of its own, named *soak*")
        ensure_database(url)
    else:
        for path in (SQLITE_FILE, SQLITE_FILE.with_name(SQLITE_FILE.name + "-wal"), SQLITE_FILE.with_name(SQLITE_FILE.name + "-shm")):
            path.unlink(missing_ok=True)
        os.environ["DATABASE_URL"] = f"sqlite:///{SQLITE_FILE}"
    # In-process and quiet: emails kept in memory (cleared each round), no per-query bookkeeping,
    # a gateway without latency or timeouts and with reproducible outcomes.
    os.environ.update(
        DJANGO_SETTINGS_MODULE="orders_project.settings",
        ENVIRONMENT="development",
        NOTIFICATION_EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
        PAYMENTS_SEED="soak",
        PAYMENTS_TIMEOUT_RATE="0",
        PAYMENTS_LATENCY_MS="0",
        DJANGO_DEBUG="false",
    )
    os.environ.setdefault("DJANGO_LOG_LEVEL", "WARNING")
    import django
    from django.core.management import call_command
    from django.db import connection

    django.setup()
    call_command("migrate", verbosity=0)
    if postgres:
        with connection.cursor() as cursor:
            cursor.execute(f"TRUNCATE {', '.join([*ORDER_TABLES, 'recovery_redrive'])} RESTART IDENTITY CASCADE")
            cursor.execute("SHOW autovacuum")
            autovacuum = cursor.fetchone()[0]
        return f"PostgreSQL {connection.pg_version // 10000}, database {connection.settings_dict['NAME']}, autovacuum {autovacuum}"
    return f"SQLite, {SQLITE_FILE}"


def mark_published() -> None:
    """What the relay does once Kafka confirmed the rows."""
    from django.utils import timezone

    from events.models import OutboxEvent

    OutboxEvent.objects.filter(published_at__isnull=True).update(published_at=timezone.now())


def run_orders(count: int) -> None:
    """``count`` orders through their life, step by step as the pipeline hands them on."""
    from django.core import mail

    from events.contract import Event
    from events.models import OutboxEvent
    from notifications.services import send_event_notifications
    from orders.services import create_order, start_processing
    from payments.services import charge_order

    order_ids = [
        str(
            create_order(
                user_id=seed_order()["user_id"], email=seed_order()["email"], items=seed_items(),
                correlation_id=str(uuid.uuid4()), idempotency_key=f"soak-{uuid.uuid4().hex}",
            ).order.id
        )
        for _ in range(count)
    ]
    mark_published()
    created = OutboxEvent.objects.filter(key__in=order_ids, event_type="ORDER_CREATED").values_list("payload", flat=True)
    # ORDER_CREATED: the service calls of the process_order and charge_payment tasks.
    for event in map(Event, created):
        start_processing(order_id=event.order_id, event_id=event.event_id, source=SOURCE)
        charge_order(order_id=event.order_id, event_id=event.event_id, source=SOURCE)
    mark_published()
    events = OutboxEvent.objects.filter(key__in=order_ids, event_type__in=STATUS_EVENTS).order_by("id")
    for event in map(Event, events.values_list("payload", flat=True)):
        send_event_notifications(event=event)
    mark_published()
    mail.outbox.clear()


def table_megabytes() -> float | None:
    """The outbox and inbox tables on disk, indexes and TOAST included (PostgreSQL only)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_total_relation_size('events_outboxevent') + pg_total_relation_size('events_inboxentry')")
        return cursor.fetchone()[0] / 2**20


def megabytes_text(megabytes: float | None) -> str:
    return "-" if megabytes is None else f"{megabytes:.1f}"


def soak(*, rounds: int, orders: int, retention: float) -> list[dict]:
    """The rounds; a row of figures per round, printed as it ends."""
    from events.models import InboxEntry, OutboxEvent
    from orders.models import Order, OrderStatus
    from recovery.reconciler import reconcile
    from recovery.selectors import Downstream, RedrivePolicy

    # Events complete as soon as their handlers applied them (no deadline); nothing is stuck here.
    policy = RedrivePolicy(
        stuck_after={OrderStatus.CREATED: 30.0, OrderStatus.PROCESSING: 45.0, OrderStatus.CANCELLING: 45.0},
        event_deadline=0.0, max_redrives=10, backoff=15.0, backoff_max=60.0, max_wait_in_flight=1800.0, stalled_after=60.0,
    )
    print(f"{'round':>5} {'orders/s':>9} {'pass s':>7} {'outbox':>7} {'inbox':>7} {'purged':>7} {'orders':>7} {'MB':>6}", flush=True)
    rows, cursor = [], 0
    for number in range(1, rounds + 1):
        started = time.perf_counter()
        run_orders(orders)
        elapsed = time.perf_counter() - started
        started = time.perf_counter()
        result = reconcile(
            policy=policy, downstream=Downstream(), retention=dt.timedelta(seconds=retention), purge_batch_size=1000, purge_max_batches=10,
            events_cursor=cursor,
        )
        pass_s = time.perf_counter() - started
        cursor = result.events_cursor
        row = {
            "round": number,
            "rate": orders / elapsed,
            "pass_s": pass_s,
            "outbox": OutboxEvent.objects.count(),
            "inbox": InboxEntry.objects.count(),
            "purged": sum(result.purged.values()),
            "orders": Order.objects.count(),
            "mb": table_megabytes(),
        }
        rows.append(row)
        print(
            f"{number:>5} {row['rate']:>9.1f} {row['pass_s']:>7.2f} {row['outbox']:>7} {row['inbox']:>7} "
            f"{row['purged']:>7} {row['orders']:>7} {megabytes_text(row['mb']):>6}",
            flush=True,
        )
    return rows


def summary(rows: list[dict], *, span: int = 5) -> str:
    """First ``span`` rounds against the last ``span``, as a Markdown table."""
    def line(label: str, part: list[dict]) -> str:
        return (
            f"| {label} | {statistics.mean(r['rate'] for r in part):.0f} | {statistics.mean(r['pass_s'] for r in part):.2f} "
            f"| {max(r['outbox'] for r in part)} | {max(r['inbox'] for r in part)} | {sum(r['purged'] for r in part)} "
            f"| {part[-1]['orders']} | {megabytes_text(part[-1]['mb'])} |"
        )

    span = min(span, len(rows))
    return "\n".join([
        "| rounds | orders/s (mean) | pass s (mean) | outbox rows (max) | inbox rows (max) | rows purged | orders at the end | outbox + inbox MB at the end |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        line(f"{rows[0]['round']}-{rows[span - 1]['round']}", rows[:span]),
        line(f"{rows[-span]['round']}-{rows[-1]['round']}", rows[-span:]),
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench.soak_history", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--orders", type=int, default=200, help="orders per round")
    parser.add_argument("--retention", type=float, default=5.0, help="seconds a completed row is kept")
    args = parser.parse_args(argv)
    print(f"{dt.datetime.now():%Y-%m-%d %H:%M}, {prepare_database()}, load average {os.getloadavg()[0]:.2f}; "
          f"{args.rounds} rounds of {args.orders} orders, retention {args.retention:g} s", flush=True)
    rows = soak(rounds=args.rounds, orders=args.orders, retention=args.retention)
    print(f"\nload average {os.getloadavg()[0]:.2f}\n{summary(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
