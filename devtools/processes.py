"""The commands of the system's processes, in one place: run-local, the tests and the
container images (docker-compose.yml, Kubernetes) start these same commands."""

from __future__ import annotations

import sys


def process_commands(*, worker_name: str = "worker") -> dict[str, list[str]]:
    python = sys.executable
    return {
        "web": [python, "-m", "gunicorn", "-c", "gunicorn.conf.py", "orders_project.wsgi"],
        "relay": [python, "manage.py", "publish_pending_events"],
        "bridge": [python, "manage.py", "run_kafka_bridge"],
        "reconciler": [python, "manage.py", "run_reconciler"],
        # Threads: the tasks wait on I/O, and one process keeps one metrics registry. Gossip and
        # mingle talk over broadcast exchanges, which the SQL transport lacks; workers need nothing
        # from each other.
        "worker": [
            python, "-m", "celery", "-A", "orders_project", "--quiet", "worker", "--pool", "threads",
            "--loglevel", "INFO", "--hostname", f"{worker_name}@%h", "--without-gossip", "--without-mingle",
        ],
    }
