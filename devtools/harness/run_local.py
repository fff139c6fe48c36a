"""``bin/run-local`` as the tests run it, and the processes it leaves behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from devtools.broker import free_port
from devtools.harness.waiting import answers, wait_until
from orders_project.config import BASE_DIR


def descendants(pid: int) -> set[int]:
    """Every process ``pid`` started, and theirs, now."""
    children = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if parent == pid:
                children |= {int(entry)} | descendants(int(entry))
    return children


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return "zombie" not in status.read()
    except OSError:
        return False


class LocalStack:
    """``bash bin/run-local`` (``python -m devtools.local_stack``) in its own session, on
    free ports only (web, the Kafka broker, every metrics endpoint), so a real run-local on the
    same machine changes nothing. Its output (its own JSON lines and every process's) goes to
    ``run-local-<n>.log`` in ``work_dir``, one file per start."""

    def __init__(self, *, work_dir: Path, **overrides: str):
        self.work_dir = work_dir
        self.port = free_port()
        self.env = {
            **os.environ,
            "HTTP_PORT": str(self.port),
            "KAFKA_BROKERS": f"127.0.0.1:{free_port()}",
            "METRICS_RELAY_PORT": str(free_port()),
            "METRICS_BRIDGE_PORT": str(free_port()),
            "METRICS_WORKER_PORT": str(free_port()),
            "METRICS_WEBHOOK_WORKER_PORT": str(free_port()),
            "METRICS_RECONCILER_PORT": str(free_port()),
            # gunicorn clears this directory when it starts: never another web process's.
            "METRICS_MULTIPROC_DIR": str(work_dir / "prometheus-web"),
            # In a directory run-local makes, as it makes var/ for its defaults.
            "DATABASE_URL": f"sqlite:///{work_dir / 'var' / 'db.sqlite3'}",
            "PAYMENTS_SIMULATOR_DATABASE_URL": f"sqlite:///{work_dir / 'var' / 'simulated-provider.sqlite3'}",
            "CELERY_BROKER_URL": f"sqla+sqlite:///{work_dir / 'var' / 'celery-broker.sqlite3'}",
            **overrides,
        }
        for queue in ("CELERY_QUEUE", "WEBHOOKS_QUEUE"):
            if queue not in overrides:
                self.env.pop(queue, None)  # run-local's default queues
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.hold_file = work_dir / "run-local.hold"
        self.logs: list[Path] = []
        self.process: subprocess.Popen | None = None

    def start(self) -> LocalStack:
        self.logs.append(self.work_dir / f"run-local-{len(self.logs) + 1}.log")
        with self.logs[-1].open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "devtools.local_stack",
                    "--broker-log",
                    str(self.work_dir / "kafka-broker.log"),
                    "--hold-file",
                    str(self.hold_file),
                ],
                cwd=BASE_DIR,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_up(self, *, timeout: float = 120.0) -> None:
        """Until web answers and the bridge has its partitions (10-20 s on the bundled broker)."""

        def up() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"run-local exited with code {self.process.returncode}: {self.logs[-1]}")
            return answers(f"{self.base_url}/health") and bool(self.events("partitions_assigned"))

        wait_until(up, timeout=timeout, interval=0.2, message=f"run-local did not come up: {self.logs[-1]}")

    def output(self) -> str:
        return self.logs[-1].read_text(errors="replace")

    def events(self, event: str | None = None, *, logger: str | None = None) -> list[dict[str, Any]]:
        """The JSON lines of the current run (optionally of one event, one logger), parsed."""
        events = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                try:
                    parsed = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if (event is None or parsed.get("event") == event) and (logger is None or parsed.get("logger") == logger):
                    events.append(parsed)
        return events

    def pid(self, name: str) -> int:
        """The pid of run-local's process ``name`` (web, relay, ...) as last started."""
        return [e["pid"] for e in self.events("process_started", logger="run-local") if e["process"] == name][-1]

    def started_pids(self) -> set[int]:
        """The pids of every process and broker the current run of run-local started."""
        return {
            e["pid"] for e in self.events(logger="run-local") if e["event"] in ("process_started", "kafka_broker_started")
        }

    def power_cut(self) -> None:
        """SIGKILL run-local, the broker and every process with what they started, as a power cut
        would: nothing is stopped cleanly, nothing is restarted. Each process is a process group
        of its own, the broker is in run-local's."""
        for group in [self.process.pid, *{e["pid"] for e in self.events("process_started", logger="run-local")}]:
            try:
                os.killpg(group, signal.SIGKILL)  # run-local's first: it restarts nothing after
            except ProcessLookupError:
                pass
        self.process.wait()
        wait_until(
            lambda: not [pid for pid in self.started_pids() if alive(pid)], timeout=30, message="a process survived SIGKILL"
        )

    def ctrl_c(self, *, timeout: float = 90.0) -> int:
        """Ctrl-C in the terminal (SIGINT to run-local's process group); its exit code."""
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.power_cut()
            raise
