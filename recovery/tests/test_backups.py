"""bin/backup and bin/restore: consistent online backups of SQLite (its backup API) and PostgreSQL
(pg_dump / pg_restore), on real databases."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from contextlib import closing

import pytest
from django.core.management import call_command

from orders_project.config import BASE_DIR
from recovery.backups import OUTBOX_ID_JUMP, POSTGRESQL, SQLITE, BackupError, backup_database, restore_database

PG = {"ENGINE": POSTGRESQL, "HOST": "127.0.0.1", "PORT": "5432", "USER": "postgres", "PASSWORD": ""}


def psql(database: str, sql: str) -> str:
    return subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-tAc", sql], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def scratch_postgres():
    """A PostgreSQL database of the test's own, dropped after it."""
    name = f"backup_{uuid.uuid4().hex[:10]}"
    psql("postgres", f"CREATE DATABASE {name}")
    try:
        yield {**PG, "NAME": name}
    finally:
        psql("postgres", f"DROP DATABASE {name} WITH (FORCE)")


def test_a_sqlite_backup_taken_while_a_writer_commits_holds_whole_transactions(tmp_path):
    path = tmp_path / "db.sqlite3"
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE pairs (id INTEGER PRIMARY KEY, half INTEGER)")
    stop, committed = threading.Event(), []

    def write_pairs():
        writer = sqlite3.connect(path, timeout=30)
        while not stop.is_set():
            with writer:  # each transaction writes two rows: a copy with an odd count is torn
                writer.execute("INSERT INTO pairs (half) VALUES (1)")
                writer.execute("INSERT INTO pairs (half) VALUES (2)")
            committed.append(1)
        writer.close()

    thread = threading.Thread(target=write_pairs)
    thread.start()
    try:
        while len(committed) < 50:
            stop.wait(0.01)
        backup_database(database={"ENGINE": SQLITE, "NAME": str(path)}, target=tmp_path / "backups" / "db.backup")
    finally:
        stop.set()
        thread.join()

    copied = sqlite3.connect(tmp_path / "backups" / "db.backup")
    rows = copied.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
    assert rows >= 100 and rows % 2 == 0
    assert copied.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    copied.close()

    restore_database(database={"ENGINE": SQLITE, "NAME": str(path)}, source=tmp_path / "backups" / "db.backup")
    restored = sqlite3.connect(path)
    assert restored.execute("SELECT COUNT(*) FROM pairs").fetchone()[0] == rows
    restored.close()


def test_a_postgresql_backup_restores_what_was_there_when_it_was_taken(scratch_postgres, tmp_path):
    name = scratch_postgres["NAME"]
    psql(name, "CREATE TABLE orders (id serial PRIMARY KEY, status text); INSERT INTO orders (status) VALUES ('PAID'), ('CREATED')")
    backup_database(database=scratch_postgres, target=tmp_path / "orders.dump")
    psql(name, "UPDATE orders SET status = 'REFUNDED'; INSERT INTO orders (status) VALUES ('CREATED'); CREATE TABLE later (id int)")

    restore_database(database=scratch_postgres, source=tmp_path / "orders.dump")

    assert psql(name, "SELECT string_agg(status, ',' ORDER BY id) FROM orders") == "PAID,CREATED"
    # The table made after the backup is left as it was: pg_restore --clean drops only what the dump holds.
    assert psql(name, "SELECT COUNT(*) FROM later") == "0"


def test_a_backup_that_cannot_be_made_says_why(tmp_path):
    with pytest.raises(BackupError, match="no database file"):
        backup_database(database={"ENGINE": SQLITE, "NAME": str(tmp_path / "missing.sqlite3")}, target=tmp_path / "x")
    with pytest.raises(BackupError, match="pg_dump failed"):
        backup_database(database={**PG, "NAME": f"missing_{uuid.uuid4().hex[:8]}"}, target=tmp_path / "x")
    with pytest.raises(BackupError, match="no backup at"):
        restore_database(database={"ENGINE": SQLITE, "NAME": str(tmp_path / "db")}, source=tmp_path / "absent")
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


@pytest.mark.django_db(transaction=True)
def test_the_backup_command_copies_the_services_own_database(tmp_path):
    from devtools.harness.sample_orders import create_test_order

    order = create_test_order(user_id="backup", email="backup@example.com", correlation_id="corr-backup")
    target = tmp_path / "service.backup"
    call_command("backup_database", str(target))
    from django.conf import settings

    engine = settings.DATABASES["default"]["ENGINE"]
    if engine == SQLITE:
        copied = sqlite3.connect(target)
        assert copied.execute("SELECT COUNT(*) FROM orders_order WHERE id = ?", (order.id.hex,)).fetchone()[0] == 1
        copied.close()
    else:
        listing = subprocess.run(["pg_restore", "--list", str(target)], check=True, capture_output=True, text=True).stdout
        assert "TABLE DATA public orders_order" in listing


# The outbox as Django makes it on each engine: ids from SQLite's AUTOINCREMENT, PostgreSQL's identity.
SQLITE_OUTBOX = "CREATE TABLE events_outboxevent (id integer NOT NULL PRIMARY KEY AUTOINCREMENT, topic text)"
PG_OUTBOX = "CREATE TABLE events_outboxevent (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, topic text)"


def inserted_id(database: str) -> int:
    return int(psql(database, "INSERT INTO events_outboxevent (topic) VALUES ('orders') RETURNING id").splitlines()[0])


def test_after_a_sqlite_restore_the_outbox_ids_go_on_past_any_the_lost_history_used(tmp_path):
    path, backup = tmp_path / "db.sqlite3", tmp_path / "db.backup"
    database = {"ENGINE": SQLITE, "NAME": str(path)}
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(SQLITE_OUTBOX)
        db.executemany("INSERT INTO events_outboxevent (topic) VALUES (?)", [("orders",)] * 3)
    backup_database(database=database, target=backup)
    with closing(sqlite3.connect(path)) as db, db:  # published after the backup, then lost with the restore
        db.executemany("INSERT INTO events_outboxevent (topic) VALUES (?)", [("orders",)] * 5)

    restore_database(database=database, source=backup)

    with closing(sqlite3.connect(path)) as db, db:
        assert db.execute("SELECT MAX(id) FROM events_outboxevent").fetchone()[0] == 3
        assert db.execute("INSERT INTO events_outboxevent (topic) VALUES ('orders') RETURNING id").fetchone()[0] == 3 + OUTBOX_ID_JUMP + 1


def test_after_a_postgresql_restore_the_outbox_ids_go_on_past_any_the_lost_history_used(scratch_postgres, tmp_path):
    name = scratch_postgres["NAME"]
    psql(name, f"{PG_OUTBOX}; INSERT INTO events_outboxevent (topic) SELECT 'orders' FROM generate_series(1, 3)")
    backup_database(database=scratch_postgres, target=tmp_path / "db.dump")
    psql(name, "INSERT INTO events_outboxevent (topic) SELECT 'orders' FROM generate_series(1, 5)")

    restore_database(database=scratch_postgres, source=tmp_path / "db.dump")

    assert psql(name, "SELECT MAX(id) FROM events_outboxevent") == "3"
    assert inserted_id(name) > 3 + OUTBOX_ID_JUMP


def test_a_database_restored_by_point_in_time_recovery_is_continued_by_the_command(scratch_postgres):
    name = scratch_postgres["NAME"]
    psql(name, f"{PG_OUTBOX}; INSERT INTO events_outboxevent (topic) VALUES ('orders')")

    subprocess.run(
        [sys.executable, "manage.py", "continue_after_restore"],
        cwd=BASE_DIR,
        env={**os.environ, "ENVIRONMENT": "development", "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{name}"},
        check=True,
        capture_output=True,
    )

    assert inserted_id(name) > 1 + OUTBOX_ID_JUMP
