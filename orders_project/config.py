"""Load ``config.yaml`` and apply environment overrides.

This is the only place that reads the process environment. Each leaf of the YAML
tree can be overridden by the variable named after its path (``kafka.group_id`` ->
``KAFKA_GROUP_ID``), cast to the type of the YAML default. Lists accept either a
comma-separated value (``KAFKA_BROKERS=a:9092,b:9092``) or indexed variables in
the Viper style (``KAFKA_BROKERS_0=a:9092``).

It also says where the local default's files are: relative SQLite paths are anchored at the
project, and ``create_local_directories`` makes their directories (SQLite will not) for the
processes that run the local default (bin/run-local, the test session); images make /app/var.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import environ
import yaml

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

# WhiteNoise serves what collectstatic gathers here (the image does, at build time) and warns at
# start when the directory is missing; locally it serves the apps' files directly.
STATIC_ROOT = BASE_DIR / "staticfiles"
SQL_BROKER_PREFIX = "sqla+sqlite:///"
REDIS_BROKER_SCHEMES = ("redis://", "rediss://")
# Redis: a task taken by a worker that died goes back to the queue after the visibility timeout;
# look for such tasks every 5 s (kombu's default sweep comes every 100 s).
REDIS_UNACKED_RESTORE_INTERVAL = 5


def _indexed_list(name: str) -> list[str] | None:
    values = []
    while f"{name}_{len(values)}" in env.ENVIRON:
        values.append(env.str(f"{name}_{len(values)}"))
    return values or None


def _override(node: Any, path: tuple[str, ...]) -> Any:
    if isinstance(node, dict):
        return {key: _override(value, (*path, str(key))) for key, value in node.items()}
    name = "_".join(path).upper()
    if isinstance(node, list):
        if name in env.ENVIRON:
            return env.list(name)
        return _indexed_list(name) or node
    if isinstance(node, bool):  # before int: bool is an int subclass
        return env.bool(name, default=node)
    if isinstance(node, int):
        return env.int(name, default=node)
    if isinstance(node, float):
        return env.float(name, default=node)
    return env.str(name, default=node)


def load_config() -> dict[str, Any]:
    """Return the configuration tree: the YAML file named by CONFIG_FILE, overridden by the environment."""
    config_path = Path(env.str("CONFIG_FILE", default=str(BASE_DIR / "config.yaml")))
    with config_path.open(encoding="utf-8") as handle:
        raw = yaml.safe_load(handle) or {}
    return _override(raw, ())


def project_path(path: str) -> Path:
    """A path from the configuration: relative ones start at the project, not at the working directory."""
    return Path(path) if Path(path).is_absolute() else BASE_DIR / path


def sqlite_database_file(database: dict[str, Any]) -> Path | None:
    """The file of a database (a parsed DATABASE_URL) on SQLite, anchored at the project; None for
    a server's database or SQLite in memory."""
    if database["ENGINE"] != "django.db.backends.sqlite3" or database["NAME"] == ":memory:":
        return None
    return project_path(database["NAME"])


def celery_broker_url(url: str) -> str:
    """The server-less SQLite broker's relative path anchored at the project, like the database's."""
    if url.startswith(SQL_BROKER_PREFIX):
        return f"{SQL_BROKER_PREFIX}{project_path(url[len(SQL_BROKER_PREFIX):])}"
    return url


def celery_transport_options(url: str, *, visibility_timeout: int) -> dict[str, Any]:
    """Redis' transport options, for Redis only: kombu's SQL transport hands every option it is
    given to SQLAlchemy's create_engine(), which refuses the ones it does not know."""
    if not url.startswith(REDIS_BROKER_SCHEMES):
        return {}
    # A retry waits in the worker (ETA) unacknowledged, so the timeout outlasts the longest backoff.
    return {
        "visibility_timeout": visibility_timeout,
        "unacked_restore_interval": REDIS_UNACKED_RESTORE_INTERVAL,
        "unacked_restore_throttle": 1,
    }


def sqlite_files(config: dict[str, Any]) -> list[Path]:
    """The SQLite files the configuration names: the database and the simulated provider's (their
    test copies sit beside them) and the SQL Celery broker."""
    urls = (config["database"]["url"], config["payments"]["simulator_database_url"])
    files = [path for url in urls if (path := sqlite_database_file(env.db_url_config(url)))]
    broker_url = celery_broker_url(config["celery"]["broker_url"])
    if broker_url.startswith(SQL_BROKER_PREFIX):
        files.append(Path(broker_url[len(SQL_BROKER_PREFIX):]))
    return files


def create_local_directories(config: dict[str, Any]) -> None:
    """Make the directories of the local default's SQLite files and the static root."""
    for directory in {STATIC_ROOT, *(path.parent for path in sqlite_files(config))}:
        directory.mkdir(parents=True, exist_ok=True)
