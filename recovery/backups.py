"""Backups of the service's database, the standard way for each engine: SQLite's online backup API
(consistent while the stack writes, unlike a file copy), and PostgreSQL's logical dump and restore
(``pg_dump`` / ``pg_restore``, custom format). Continuous archiving with point-in-time recovery on
PostgreSQL is set up on the server, not here (README, "Backups and restore").

A restore takes the database back in time while Kafka, the Celery broker, the payment provider and
the customers' mailboxes keep what they had: run it with the stack stopped, then start the stack
and follow the restore procedure (README, "Backups and restore").
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path
from typing import Any

from events.models import OutboxEvent

SQLITE = "django.db.backends.sqlite3"
POSTGRESQL = "django.db.backends.postgresql"
# After a restore the outbox's ids go on this far past the largest the backup holds: past any id
# the history the restore lost can have used (2^40 events), so that every event made after it has
# a higher ``sequence`` (its outbox id, in webhooks) than any sent before, and receivers that keep
# the highest per order take it. A bigint holds millions of such jumps.
OUTBOX_ID_JUMP = 2**40


class BackupError(Exception):
    """A backup or restore that could not be made; the message says why."""


def backup_database(*, database: dict[str, Any], target: Path) -> None:
    """Write a consistent copy of ``database`` (a Django DATABASES entry) to ``target``, online."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        if database["ENGINE"] == SQLITE:
            source = Path(database["NAME"])
            if not source.exists():
                raise BackupError(f"no database file at {source}")
            _sqlite_copy(source=f"file:{source}?mode=ro", target=str(partial))
        elif database["ENGINE"] == POSTGRESQL:
            _run(["pg_dump", "--format=custom", "--no-owner", f"--file={partial}", *_pg_connection(database)], database)
        else:
            raise BackupError(f"no backup for the database engine {database['ENGINE']}")
    except BaseException:
        partial.unlink(missing_ok=True)  # never a half-written file where a backup is expected
        raise
    partial.replace(target)


def restore_database(*, database: dict[str, Any], source: Path) -> None:
    """Replace the contents of ``database`` with the backup ``source``, then ``continue_after_restore``;
    the stack must be stopped."""
    if not source.is_file():
        raise BackupError(f"no backup at {source}")
    if database["ENGINE"] == SQLITE:
        target = Path(database["NAME"])
        target.parent.mkdir(parents=True, exist_ok=True)
        _sqlite_copy(source=f"file:{source}?mode=ro", target=str(target))
    elif database["ENGINE"] == POSTGRESQL:
        _run(
            ["pg_restore", "--clean", "--if-exists", "--no-owner", "--single-transaction", "--exit-on-error",
             *_pg_connection(database), str(source)],
            database,
        )
    else:
        raise BackupError(f"no restore for the database engine {database['ENGINE']}")
    continue_after_restore(database=database)


def continue_after_restore(*, database: dict[str, Any]) -> None:
    """Move the outbox's next id ``OUTBOX_ID_JUMP`` ahead, in a database just restored (by
    ``restore_database``, or by the server's point-in-time recovery); nothing if it has no outbox."""
    table = OutboxEvent._meta.db_table
    if database["ENGINE"] == SQLITE:
        with closing(sqlite3.connect(database["NAME"])) as connection, connection:
            if connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [table]).fetchone():
                moved = connection.execute("UPDATE sqlite_sequence SET seq = seq + ? WHERE name = ?", [OUTBOX_ID_JUMP, table])
                if not moved.rowcount:  # no row was ever inserted
                    connection.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", [table, OUTBOX_ID_JUMP])
    elif database["ENGINE"] == POSTGRESQL:
        sequence = f"pg_get_serial_sequence('{table}', 'id')"
        advance = (
            f"DO $$ BEGIN IF to_regclass('{table}') IS NOT NULL THEN "
            f"PERFORM setval({sequence}, nextval({sequence}) + {OUTBOX_ID_JUMP}); END IF; END $$"
        )
        _run(["psql", "--no-psqlrc", "--quiet", "-v", "ON_ERROR_STOP=1", *_pg_connection(database), "-c", advance], database)
    else:
        raise BackupError(f"no restore for the database engine {database['ENGINE']}")


def _sqlite_copy(*, source: str, target: str) -> None:
    # The backup API copies page by page under SQLite's own locking: what a concurrent writer
    # commits meanwhile is either wholly in the copy or not at all.
    reading, writing = sqlite3.connect(source, uri=True), sqlite3.connect(target)
    try:
        reading.backup(writing)
    finally:
        writing.close()
        reading.close()


def _pg_connection(database: dict[str, Any]) -> list[str]:
    options = [f"--dbname={database['NAME']}"]
    if database.get("HOST"):
        options.append(f"--host={database['HOST']}")
    if database.get("PORT"):
        options.append(f"--port={database['PORT']}")
    if database.get("USER"):
        options.append(f"--username={database['USER']}")
    return options


def _run(command: list[str], database: dict[str, Any]) -> None:
    env = {**os.environ, "PGPASSWORD": str(database.get("PASSWORD") or "")}
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise BackupError(f"{command[0]} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
