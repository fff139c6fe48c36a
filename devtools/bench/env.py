"""Where the benchmark runs: its own PostgreSQL database, Redis db and environment."""

from __future__ import annotations

import copy
import logging
import os
import urllib.parse
from decimal import Decimal
from pathlib import Path
from typing import Any

from devtools.broker import CLIENT_ENV
from devtools.harness.sample_orders import SEED_ORDER

BASE_DIR = Path(__file__).resolve().parents[2]
OUTPUT_DIR = BASE_DIR / "var" / "benchmarks"

DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/orders_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5")
# The ORM-only loops write to a database of their own on the same server: measured while the
# relay runs (around the end-to-end phase), their orders must not enter the pipeline.
_DATABASE_PARTS = urllib.parse.urlsplit(DATABASE_URL)
ORM_DATABASE_URL = os.environ.get(
    "BENCH_ORM_DATABASE_URL", urllib.parse.urlunsplit(_DATABASE_PARTS._replace(path=_DATABASE_PARTS.path + "_orm"))
)
# The simulated provider's ledger, apart as in every run (payments.simulator), on the same server.
PROVIDER_DATABASE_URL = os.environ.get(
    "BENCH_PROVIDER_DATABASE_URL",
    urllib.parse.urlunsplit(_DATABASE_PARTS._replace(path=_DATABASE_PARTS.path + "_provider")),
)

# The ``source`` of the events the benchmark's in-process service calls write (the workers put theirs).
SOURCE = "benchmark"

# Everything an order writes; emptied between phases.
ORDER_TABLES = [
    "orders_order",
    "orders_orderitem",
    "orders_ordertimelineentry",
    "events_outboxevent",
    "events_inboxentry",
    "events_deadletter",
    "payments_payment",
    "payments_refund",
    "payments_cancellation",
    "notifications_notification",
    "webhooks_webhookattempt",
    "webhooks_webhookdelivery",
    # The end-to-end phase's endpoint: a run stopped during that phase leaves none behind.
    "webhooks_webhookendpoint",
]


def seed_order() -> dict[str, Any]:
    """The order every phase creates: the seed's example request body."""
    return SEED_ORDER


def seed_items() -> list[dict]:
    """The seed's items as the serializer hands them to ``create_order`` (prices as Decimal)."""
    items = copy.deepcopy(seed_order()["items"])
    for item in items:
        item["price"] = Decimal(str(item["price"])).quantize(Decimal("0.01"))
    return items


def app_environment(*, kafka_brokers: str, run_id: str, http_port: int) -> dict[str, str]:
    """The variables of the system under test (and of this process, which calls its code in-process)."""
    return {
        "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "orders_project.settings",
        # Development's settings (no key, hosts or SMTP server to provide), with debug off below.
        "ENVIRONMENT": "development",
        "DATABASE_URL": DATABASE_URL,
        "PAYMENTS_SIMULATOR_DATABASE_URL": PROVIDER_DATABASE_URL,
        "CELERY_BROKER_URL": REDIS_URL,
        "CELERY_QUEUE": f"bench-pipeline-{run_id}",
        "WEBHOOKS_QUEUE": f"bench-webhooks-{run_id}",
        # The end-to-end phase's receiver is a plain-HTTP process on loopback.
        "WEBHOOKS_ALLOW_HTTP": "true",
        "WEBHOOKS_ALLOW_LOOPBACK": "true",
        **CLIENT_ENV,
        "KAFKA_BROKERS": kafka_brokers,
        "KAFKA_GROUP_ID": f"bench-bridge-{run_id}",
        "HTTP_PORT": str(http_port),
        "PAYMENTS_SEED": "bench",
        # Throttling off: the benchmark is one client sending hundreds of orders a second.
        "API_THROTTLE_ANON": "",
        "API_THROTTLE_USER": "",
        # Production-like: no debug page, no per-query bookkeeping (override with DJANGO_DEBUG=true).
        "DJANGO_DEBUG": os.environ.get("DJANGO_DEBUG", "false"),
        "DJANGO_LOG_LEVEL": os.environ.get("DJANGO_LOG_LEVEL", "INFO"),
    }


def ensure_database(url: str = DATABASE_URL) -> bool:
    """CREATE DATABASE if it is missing; True if it was created."""
    import psycopg

    parts = urllib.parse.urlsplit(url)
    name = parts.path.lstrip("/")
    admin_dsn = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        conn.execute(f'CREATE DATABASE "{name}"')
        return True


def flush_redis(url: str = REDIS_URL) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        client.flushdb()
    finally:
        client.close()


def setup_django(*, log_file: Path | None = None) -> None:
    """django.setup() with the environment already in os.environ; this process's log lines
    (the services log at INFO) go to ``log_file`` instead of the terminal."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orders_project.settings")
    django.setup()
    log_file = log_file or (Path(os.environ["BENCH_LOG_FILE"]) if os.environ.get("BENCH_LOG_FILE") else None)
    if log_file:
        stream = log_file.open("a", buffering=1)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setStream(stream)


def truncate_order_tables(url: str = DATABASE_URL) -> None:
    """Empties the order tables of the database at ``url`` (the system's by default, and then the
    simulated provider's ledger too)."""
    import psycopg

    tables = {url: ORDER_TABLES}
    if url == DATABASE_URL:
        tables[PROVIDER_DATABASE_URL] = ["payments_simulatedcharge", "payments_simulatedrefund"]
    for database, names in tables.items():
        with psycopg.connect(database, autocommit=True, connect_timeout=10) as conn:
            conn.execute("SET lock_timeout = '20s'")
            conn.execute(f"TRUNCATE {', '.join(names)} RESTART IDENTITY CASCADE")


def database_counters() -> dict[str, int]:
    """PostgreSQL's cumulative counters for this database (updated by each backend within ~1-10 s)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted, tup_fetched, sessions "
            "FROM pg_stat_database WHERE datname = current_database()"
        )
        row = cursor.fetchone()
    keys = ["xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted", "tup_fetched", "sessions"]
    return dict(zip(keys, row))
