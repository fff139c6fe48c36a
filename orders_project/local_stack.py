"""Run the whole system on the embedded default with one command: ``bash bin/run-local``.

Starts the bundled Kafka-protocol broker, applies migrations and creates the topics, then
runs web (gunicorn), relay, bridge and a Celery worker and supervises them. Ctrl-C or SIGTERM stops everything, each
process getting SIGTERM first so it can finish what it is doing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from events.embedded_broker import CLIENT_ENV, EmbeddedKafkaBroker
from orders_project.config import BASE_DIR, load_config
from orders_project.processes import process_commands

DEV_ADMIN_USER = "admin"
DEV_ADMIN_PASSWORD = "admin"
STOP_TIMEOUT = 25.0


def _manage(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, check=check, capture_output=not check, text=True
    )


def _stop(children: dict[str, subprocess.Popen]) -> None:
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for name, child in children.items():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"[run-local] {name} did not stop in {STOP_TIMEOUT}s, killing it", flush=True)
            child.kill()
            child.wait()


def main() -> int:
    config = load_config()
    broker_port = int(config["kafka"]["brokers"][0].rsplit(":", 1)[1])
    var_dir = BASE_DIR / "var"
    var_dir.mkdir(exist_ok=True)
    broker = EmbeddedKafkaBroker(port=broker_port, log_path=var_dir / "kafka-broker.log").start()
    env = {**CLIENT_ENV, **os.environ, "KAFKA_BROKERS": broker.bootstrap_servers, "PYTHONUNBUFFERED": "1"}

    stopping = False

    def request_stop(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    children: dict[str, subprocess.Popen] = {}
    exit_code = 0
    try:
        _manage("migrate", "--noinput", "-v", "0", env=env)
        _manage("setup_kafka_topics", env=env)
        created = _manage(
            "createsuperuser",
            "--noinput",
            "--username",
            DEV_ADMIN_USER,
            "--email",
            "admin@example.com",
            env={**env, "DJANGO_SUPERUSER_PASSWORD": DEV_ADMIN_PASSWORD},
            check=False,
        )
        for name, command in process_commands().items():
            # Own process group: Ctrl-C reaches only this supervisor, which stops the children in order.
            children[name] = subprocess.Popen(command, cwd=BASE_DIR, env=env, start_new_session=True)
        base_url = f"http://localhost:{config['http']['port']}"
        admin_note = f" (user {DEV_ADMIN_USER}, password {DEV_ADMIN_PASSWORD})" if created.returncode == 0 else ""
        print(
            f"[run-local] up: API {base_url}/orders  admin {base_url}/admin/{admin_note}  "
            f"docs {base_url}/api/docs/  Kafka {broker.bootstrap_servers}. Ctrl-C stops everything.",
            flush=True,
        )
        while not stopping:
            exited = {name: child.returncode for name, child in children.items() if child.poll() is not None}
            if exited:
                print(f"[run-local] process exited unexpectedly: {exited}; stopping the rest", flush=True)
                exit_code = 1
                break
            time.sleep(0.5)
    finally:
        _stop(children)
        broker.stop()
        print("[run-local] stopped", flush=True)
    return exit_code


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orders_project.settings")
    sys.exit(main())
