"""The processes under test: web, relay, bridge, Celery workers and the reconciler, each started
with the command run-local and the containers run (devtools/processes.py), as a separate process
against the test database, a real Kafka-protocol broker and a real Celery broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connections

from devtools.broker import free_port
from devtools.harness.metrics import Samples, parse_metrics
from devtools.harness.waiting import answers, wait_until
from devtools.processes import process_commands
from orders_project.config import BASE_DIR


def database_url(alias: str = "default") -> str:
    """The URL of the database ``alias`` of this process (the test database under pytest)."""
    return url_of_database(connections[alias].settings_dict)


def url_of_database(db: dict[str, Any]) -> str:
    """The URL of ``db``, a DATABASES entry."""
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    user = db["USER"] or "postgres"
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    return f"postgres://{user}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def database_environment() -> dict[str, str]:
    """The variables that point a process at this process's databases: the service's and the
    simulated provider's."""
    return {"DATABASE_URL": database_url(), "PAYMENTS_SIMULATOR_DATABASE_URL": database_url("provider")}


def celery_broker_url(*, work_dir: Path) -> str:
    """The configured Celery broker, or a fresh SQL broker file when that is the (local) default."""
    url = settings.CELERY_BROKER_URL
    if url.startswith("sqla+"):
        return f"sqla+sqlite:///{work_dir / 'celery-broker.sqlite3'}"
    return url


class ProcessGroup:
    """Named child processes sharing one environment; each logs to ``<log_dir>/<name>.log``."""

    def __init__(self, *, env: dict[str, str], log_dir: Path):
        self.env = env
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen] = {}
        self.metrics_ports: dict[str, int] = {}

    @classmethod
    def for_tests(cls, *, kafka_brokers: str, work_dir: Path, **overrides: str) -> ProcessGroup:
        """An environment pointing at the current database and ``kafka_brokers``, isolated by a
        unique consumer group and Celery queues so earlier runs' messages never interfere."""
        run_id = uuid.uuid4().hex[:8]
        env = {
            **os.environ,
            "ENVIRONMENT": "development",
            # web's /metrics and /health/ready answer only this, as in production (internal_get).
            "HTTP_INTERNAL_TOKEN": f"test-internal-{uuid.uuid4().hex}",
            "PYTHONUNBUFFERED": "1",
            **database_environment(),
            "KAFKA_BROKERS": kafka_brokers,
            "KAFKA_GROUP_ID": f"test-bridge-{run_id}",
            "CELERY_BROKER_URL": celery_broker_url(work_dir=work_dir),
            "CELERY_QUEUE": f"test-pipeline-{run_id}",
            "WEBHOOKS_QUEUE": f"test-webhooks-{run_id}",
            "CELERY_CONCURRENCY": "2",
            "OUTBOX_MAX_BACKOFF": "1.0",
            **overrides,
        }
        return cls(env=env, log_dir=work_dir)

    @classmethod
    def with_web_port(cls, *, kafka_brokers: str, work_dir: Path, **overrides: str) -> tuple[ProcessGroup, int]:
        """``for_tests`` with web on a free port (returned), one gunicorn worker unless overridden."""
        port = free_port()
        env = {"HTTP_PORT": str(port), "HTTP_WORKERS": "1", **overrides}
        return cls.for_tests(kafka_brokers=kafka_brokers, work_dir=work_dir, **env), port

    def start(self, name: str, *, command: str | None = None, **env_overrides: str) -> subprocess.Popen:
        """Start ``command`` (a key of ``process_commands``, default ``name``) as ``name``."""
        command_line = process_commands(worker_name=name)[command or name]
        log = (self.log_dir / f"{name}.log").open("ab")
        # Each process its own metrics port (a process reads only the key of its kind).
        port = self.metrics_ports[name] = free_port()
        metrics_env = {
            "METRICS_RELAY_PORT": str(port),
            "METRICS_BRIDGE_PORT": str(port),
            "METRICS_WORKER_PORT": str(port),
            "METRICS_WEBHOOK_WORKER_PORT": str(port),
            "METRICS_RECONCILER_PORT": str(port),
            "METRICS_MULTIPROC_DIR": str(self.log_dir / f"prometheus-{name}"),
        }
        self.processes[name] = subprocess.Popen(
            command_line,
            cwd=BASE_DIR,
            env={**self.env, **metrics_env, **env_overrides},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self.processes[name]

    def start_system(self, *, port: int) -> None:
        """web (on ``port``), relay, bridge, a worker and the reconciler, as run-local starts them;
        returns once web answers and the bridge has partitions (a group join takes 10-20 s on the
        bundled broker). Also a start again, after ``stop_all``: the bridge's log goes on."""
        assigned_before = self._assignments()
        for name in ("web", "relay", "bridge", "worker", "reconciler"):
            self.start(name)
        self.base_url = f"http://127.0.0.1:{port}"
        wait_until(lambda: answers(f"{self.base_url}/health"), timeout=30, message="web did not come up")
        wait_until(
            lambda: self._assignments() > assigned_before,
            timeout=60,
            message="bridge got no partitions",
        )

    def _assignments(self) -> int:
        """How many times the bridge logged partitions assigned to it."""
        if not (self.log_dir / "bridge.log").exists():
            return 0
        return sum(1 for event in self.log_events("bridge") if event["event"] == "partitions_assigned")

    def start_webhook_worker(self, name: str = "webhook-worker", **env_overrides: str) -> subprocess.Popen:
        """A worker of the webhooks queue only (its default queue), so that receivers never hold
        the pipeline's worker."""
        return self.start(name, command="webhook-worker", **env_overrides)

    def signal(self, name: str, signum: int) -> None:
        os.killpg(self.processes[name].pid, signum)

    def stop(self, name: str, *, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the clean stop every process must support."""
        process = self.processes.pop(name)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        return process.returncode

    def kill(self, name: str) -> None:
        """SIGKILL the process and everything it started (a crash, no clean-up)."""
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)

    def metrics(self, name: str) -> Samples:
        """The process's Prometheus samples now: {(name, sorted labels): value}; web's from its
        /metrics (which reads the database's gauges at most every couple of seconds)."""
        if name == "web":
            return parse_metrics(self.internal_get("/metrics").decode())
        url = f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return parse_metrics(text)

    @property
    def internal_token(self) -> str:
        return self.env["HTTP_INTERNAL_TOKEN"]

    def internal_get(self, path: str) -> bytes:
        """The body of web's ``path`` (/metrics, /health/ready) asked with the internal token;
        ``urllib.error.HTTPError`` for any status but 2xx."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.env['HTTP_PORT']}{path}", headers={"Authorization": f"Bearer {self.internal_token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def log_events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log lines of a process, parsed (other output skipped)."""
        events = []
        for line in self.log(name).splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return events
