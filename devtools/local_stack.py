"""Run the whole system on the embedded default with one command: ``bash bin/run-local``.

Starts the bundled Kafka-protocol broker, applies migrations and creates the topics, then runs
web (gunicorn), relay, bridge, the Celery workers (the pipeline's and the webhooks') and the reconciler,
and supervises them:

- a process that exits while the stack runs is started again, after 1 s, then 2, 4, ... up to
  30 s if it keeps exiting; the wait starts from 1 s again once it ran for a minute. The rest of
  the stack keeps running.
- if the broker exits it is started again on the same port, the topics are created again and the
  relay is started again (a new Kafka producer) before anything else happens. Its storage is
  memory, so what it held is gone: the events it had confirmed but the bridge had not handed over
  yet come back through the reconciler, which re-drives the orders that stay stuck.
- Ctrl-C or SIGTERM stops the processes first (SIGTERM, so each finishes what it is doing; killed
  after ``STOP_TIMEOUT``), the broker last.
- the processes named in the hold file (``var/run-local.hold``, one name a line) are stopped the
  same way and kept stopped while the broker runs on, keeping what it holds; removed from it,
  they start again after ``migrate`` (the database may have been restored meanwhile). What is
  held now is in ``var/run-local.held``. ``bin/restore-drill`` restores the database this way.

Every line run-local itself prints is one JSON object (``"logger": "run-local"``), like the
processes' own lines.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import structlog

from devtools.broker import CLIENT_ENV, EmbeddedKafkaBroker
from devtools.processes import process_commands
from orders_project.config import BASE_DIR, create_local_directories, load_config
from orders_project.logging import SERVICE_NAME

DEV_ADMIN_USER = "admin"
DEV_ADMIN_PASSWORD = "admin"
STOP_TIMEOUT = 25.0
# Restart backoff of a process (or the broker) that exited: from the first wait, doubling up to
# the longest; a process that ran this long before exiting starts from the first wait again.
RESTART_BACKOFF = 1.0
RESTART_BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0
# How often the supervisor looks at its processes.
POLL_INTERVAL = 0.2


def _logger(config: dict) -> structlog.typing.FilteringBoundLogger:
    """JSON lines with the fields, in the order, of the processes' own (orders_project.logging)."""

    def stamp(_logger, _method, event_dict):
        event_dict["logger"] = "run-local"
        return event_dict

    def service_fields(_logger, _method, event_dict):
        event_dict.update(service=SERVICE_NAME, environment=config["environment"])
        return event_dict

    return structlog.wrap_logger(
        structlog.PrintLogger(sys.stdout),
        processors=[
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            service_fields,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(0),
        cache_logger_on_first_use=False,
    )


# Lines of the processes, written as run-local's own are (structlog's PrintLogger locks per file).
_OUTPUT = structlog.PrintLogger(sys.stdout)


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _exit_description(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def _manage(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    """Run a management command; its log lines (JSON, on stderr) pass through, its plain-text
    report on stdout is kept out of run-local's output (and in the error if it fails)."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=None if check else subprocess.PIPE,
        text=True,
    )
    if check and result.returncode:
        raise RuntimeError(f"manage.py {' '.join(args)} exited with code {result.returncode}: {result.stdout.strip()}")
    return result


class Backoff:
    """Restart waits: 1, 2, 4, ... up to the maximum, from the start again after a stable run."""

    def __init__(self) -> None:
        self.restarts = 0

    def next_delay(self, *, ran_for: float) -> float:
        if ran_for >= STABLE_AFTER:
            self.restarts = 0
        delay = min(RESTART_BACKOFF_MAX, RESTART_BACKOFF * 2**self.restarts)
        self.restarts += 1
        return delay


class Child:
    """One supervised process of the stack: started in its own process group, so Ctrl-C in the
    terminal reaches only run-local, which stops the processes in order."""

    def __init__(self, name: str, command: list[str], *, env: dict[str, str], log) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.log = log
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0
        self.restart_at: float | None = None
        self.backoff = Backoff()
        self.starts = 0

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command, cwd=BASE_DIR, env=self.env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        threading.Thread(target=self._pass_output, args=(self.process.stdout,), daemon=True).start()
        self.started_at = time.monotonic()
        self.restart_at = None
        self.starts += 1
        self.log.info("process_started", process=self.name, pid=self.process.pid, start=self.starts)

    def _pass_output(self, stream) -> None:
        """The process's lines onto run-local's output: JSON lines as they are, any other line (a
        library's print, a shutdown notice) wrapped in one, so the whole output stays JSON lines."""
        for raw in stream:
            line = raw.decode(errors="replace").rstrip("\n")
            if not line.strip():
                continue
            if _is_json_object(line):
                _OUTPUT.msg(line)
            else:
                self.log.info("process_output", process=self.name, line=line)

    def supervise(self, now: float) -> None:
        """Notice an unexpected exit and schedule the restart; restart when it is due."""
        if self.restart_at is None:
            code = self.process.poll()
            if code is None:
                return
            ran_for = now - self.started_at
            delay = self.backoff.next_delay(ran_for=ran_for)
            self.restart_at = now + delay
            self.log.error(
                "process_exited",
                process=self.name,
                pid=self.process.pid,
                exit_code=code,
                ran_for_s=round(ran_for, 1),
                restart_in_s=delay,
                message=f"{self.name} (pid {self.process.pid}) exited with {_exit_description(code)} after "
                f"{ran_for:.1f} s; restarting it in {delay:g} s, the rest of the stack keeps running",
            )
        elif now >= self.restart_at:
            try:
                self.start()
            except OSError as exc:  # cannot even be started (no memory, too many open files)
                delay = self.backoff.next_delay(ran_for=0.0)
                self.restart_at = now + delay
                self.log.error(
                    "process_start_failed",
                    process=self.name,
                    error=str(exc),
                    restart_in_s=delay,
                    message=f"could not start {self.name} ({exc}); trying again in {delay:g} s",
                )

    def restart_now(self, *, reason: str) -> None:
        """Stop it (SIGTERM, so it finishes its batch) and start it again at once."""
        if self.process is None or self.restart_at is not None:
            return  # not running: its scheduled restart starts it
        self.log.warning("process_restarting", process=self.name, pid=self.process.pid, message=f"restarting {self.name}: {reason}")
        self.terminate()
        self.wait_or_kill(time.monotonic() + STOP_TIMEOUT)
        self.start()

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait_or_kill(self, deadline: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.log.warning(
                "process_killed",
                process=self.name,
                pid=self.process.pid,
                message=f"{self.name} did not stop in {STOP_TIMEOUT:g} s, killing it",
            )
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # with what it started (gunicorn's workers)
            except ProcessLookupError:
                pass
            self.process.wait()


def _start_broker(broker: EmbeddedKafkaBroker) -> None:
    """Start the broker with SIGINT blocked (inherited across exec): it shares run-local's process
    group, and Ctrl-C in the terminal must not stop it before the processes that use it. run-local
    stops it last, with SIGTERM."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        broker.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class Stack:
    def __init__(self, *, config: dict, log, broker_log: Path, hold_file: Path) -> None:
        self.config = config
        self.log = log
        self.stopping = False
        self.stop_signal: str | None = None
        self.hold_file = hold_file
        self.held_file = hold_file.with_suffix(".held")
        self.held: set[str] = set()
        broker_port = int(config["kafka"]["brokers"][0].rsplit(":", 1)[1])
        broker_log.parent.mkdir(parents=True, exist_ok=True)
        create_local_directories(config)
        self.broker = EmbeddedKafkaBroker(port=broker_port, log_path=broker_log)
        self.broker_started_at = 0.0
        self.broker_backoff = Backoff()
        self.env = {
            **CLIENT_ENV,
            **os.environ,
            "ENVIRONMENT": "development",
            "KAFKA_BROKERS": self.broker.bootstrap_servers,
            "PYTHONUNBUFFERED": "1",
        }
        self.children = [
            Child(name, command, env=self.env, log=log) for name, command in process_commands().items()
        ]

    def request_stop(self, signum, _frame) -> None:
        # Only flags: a signal handler must not take locks the interrupted code may hold.
        self.stop_signal = self.stop_signal or signal.Signals(signum).name
        self.stopping = True

    def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` unless a stop is requested meanwhile; True if it was."""
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(POLL_INTERVAL, max(0.0, deadline - time.monotonic())))
        return self.stopping

    def _start_broker(self) -> None:
        _start_broker(self.broker)
        self.broker_started_at = time.monotonic()
        self.log.info("kafka_broker_started", pid=self.broker.process.pid, kafka=self.broker.bootstrap_servers)

    def run(self) -> int:
        try:
            # A new run holds nothing: a hold left by an earlier run is void.
            self.hold_file.unlink(missing_ok=True)
            self.held_file.unlink(missing_ok=True)
            self._start_broker()
            _manage("migrate", "--noinput", "-v", "0", env=self.env)
            _manage("migrate", "--database", "provider", "--noinput", "-v", "0", env=self.env)
            _manage("create_operator_groups", env=self.env)  # README, "Admin actions"
            _manage("setup_kafka_topics", env=self.env)
            created = _manage(
                "createsuperuser",
                "--noinput",
                "--username",
                DEV_ADMIN_USER,
                "--email",
                "admin@example.com",
                env={**self.env, "DJANGO_SUPERUSER_PASSWORD": DEV_ADMIN_PASSWORD},
                check=False,
            )
            for child in self.children:
                if not self.stopping:
                    child.start()
            if not self.stopping:
                self._announce(admin_created=created.returncode == 0)
            while not self._sleep(POLL_INTERVAL):
                if self.broker.process.poll() is not None:
                    self._restart_broker()
                self._apply_hold()
                now = time.monotonic()
                for child in self.children:
                    if self.stopping:
                        break
                    if child.name not in self.held:
                        child.supervise(now)
        except (OSError, RuntimeError, TimeoutError) as exc:
            self.log.error("run_local_failed", error=f"{type(exc).__name__}: {exc}", message=f"run-local failed: {exc}")
            return 1
        finally:
            if self.stopping:
                self.log.info(
                    "stop_requested", signal=self.stop_signal, message="stopping the processes, then the Kafka broker"
                )
            self._stop()
        return 0

    def _apply_hold(self) -> None:
        """Stop the processes the hold file names newly, start those it no longer names (after
        ``migrate``), then write what is held to the held file."""
        try:
            wanted = set(self.hold_file.read_text().split()) & {child.name for child in self.children}
        except FileNotFoundError:
            wanted = set()
        if wanted == self.held:
            return
        holding = [child for child in self.children if child.name in wanted - self.held]
        releasing = [child for child in self.children if child.name in self.held - wanted]
        for child in holding:
            child.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for child in holding:
            child.wait_or_kill(deadline)
        self.held = wanted
        if releasing:
            _manage("migrate", "--noinput", "-v", "0", env=self.env)
            for child in releasing:
                child.start()
        self.log.info(
            "processes_held",
            held=sorted(wanted),
            message=f"stopped until {self.hold_file} no longer names them: {', '.join(sorted(wanted))}"
            if wanted
            else f"every process runs again ({self.hold_file} names none)",
        )
        self.held_file.write_text("".join(f"{name}\n" for name in sorted(wanted)))

    def _announce(self, *, admin_created: bool) -> None:
        base_url = f"http://localhost:{self.config['http']['port']}"
        api, admin, docs = f"{base_url}/orders", f"{base_url}/admin/", f"{base_url}/api/docs/"
        credentials = {"admin_user": DEV_ADMIN_USER, "admin_password": DEV_ADMIN_PASSWORD} if admin_created else {}
        admin_note = f" (user {DEV_ADMIN_USER}, password {DEV_ADMIN_PASSWORD})" if admin_created else ""
        self.log.info(
            "run_local_up",
            api=api,
            admin=admin,
            docs=docs,
            kafka=self.broker.bootstrap_servers,
            processes=[child.name for child in self.children],
            **credentials,
            message=f"up: API {api}  admin {admin}{admin_note}  docs {docs}  Kafka {self.broker.bootstrap_servers}. "
            "Ctrl-C stops everything.",
        )

    def _restart_broker(self) -> None:
        """The broker exited: start it again on the same port, create the topics again (with
        backoff while that fails), then start the relay again. The other processes keep running
        (the bridge reconnects and joins its group again)."""
        code = self.broker.process.returncode
        ran_for = time.monotonic() - self.broker_started_at
        delay = self.broker_backoff.next_delay(ran_for=ran_for)
        self.log.error(
            "kafka_broker_exited",
            pid=self.broker.process.pid,
            exit_code=code,
            ran_for_s=round(ran_for, 1),
            restart_in_s=delay,
            message=f"the Kafka broker (pid {self.broker.process.pid}) exited with {_exit_description(code)} after "
            f"{ran_for:.1f} s; restarting it on {self.broker.bootstrap_servers} in {delay:g} s",
        )
        while not self._sleep(delay):
            try:
                self._start_broker()
                _manage("setup_kafka_topics", env=self.env)
            except (OSError, RuntimeError, TimeoutError) as exc:
                self.broker.stop()
                delay = self.broker_backoff.next_delay(ran_for=0.0)
                self.log.error(
                    "kafka_broker_restart_failed",
                    error=f"{type(exc).__name__}: {exc}",
                    restart_in_s=delay,
                    message=f"could not start the Kafka broker again or create its topics ({exc}); "
                    f"trying again in {delay:g} s",
                )
                continue
            self.log.warning(
                "kafka_broker_restarted",
                pid=self.broker.process.pid,
                kafka=self.broker.bootstrap_servers,
                message=f"the Kafka broker runs again on {self.broker.bootstrap_servers} with its topics; what it "
                "held is gone, and the reconciler re-drives the orders that were waiting on it",
            )
            # The relay's idempotent producer keeps a producer id and sequence numbers the new
            # broker never heard of, and times out on every batch: a new relay has a new producer.
            # (The bridge rejoins its group by itself.)
            for child in self.children:
                if child.name == "relay" and not self.stopping and child.name not in self.held:
                    child.restart_now(reason="its Kafka producer does not recover from a broker that lost its state")
            return

    def _stop(self) -> None:
        """The processes first (SIGTERM, then SIGKILL after ``STOP_TIMEOUT``), the broker last."""
        for child in self.children:
            child.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for child in self.children:
            child.wait_or_kill(deadline)
        exit_codes = {child.name: child.process.returncode for child in self.children if child.process is not None}
        self.log.info(
            "processes_stopped",
            exit_codes=exit_codes,
            kafka_broker_running=self.broker.process is not None and self.broker.process.poll() is None,
            message=f"processes stopped ({', '.join(f'{n} {_exit_description(c)}' for n, c in exit_codes.items())}); "
            "stopping the Kafka broker",
        )
        self.broker.stop()
        self.log.info("run_local_stopped", message="stopped: every process and the Kafka broker")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bin/run-local", description="Run the whole system locally; Ctrl-C stops it.")
    parser.add_argument(
        "--broker-log", type=Path, default=BASE_DIR / "var" / "kafka-broker.log", help="the Kafka broker's log file"
    )
    parser.add_argument(
        "--hold-file",
        type=Path,
        default=BASE_DIR / "var" / "run-local.hold",
        help="names of processes to stop and keep stopped, one a line (the Kafka broker runs on)",
    )
    args = parser.parse_args(argv)
    config = load_config()
    stack = Stack(config=config, log=_logger(config), broker_log=args.broker_log, hold_file=args.hold_file)
    signal.signal(signal.SIGINT, stack.request_stop)
    signal.signal(signal.SIGTERM, stack.request_stop)
    return stack.run()


if __name__ == "__main__":
    # The local stack is development, whatever the shell says: debug pages, the repository's key,
    # an open API, emails in the log (any other ENVIRONMENT is production and wants its secrets).
    os.environ["ENVIRONMENT"] = "development"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orders_project.settings")
    sys.exit(main())
