"""The commands of the system's processes, in one place: run-local, the tests and the
container images (docker-compose.yml, Kubernetes) start these same commands."""

from __future__ import annotations

import sys


def process_commands(*, worker_name: str | None = None) -> dict[str, list[str]]:
    """``worker_name``: the Celery node name of the workers, ``<worker_name>@%h`` (by default each
    its process's name: ``worker@%h``, ``webhook-worker@%h``)."""
    python = sys.executable

    def celery_worker(*, serves: str, node: str) -> list[str]:
        return [
            python, "-m", "celery", "-A", "orders_project", "--quiet", "worker", "--serves", serves, "--pool", "threads",
            "--loglevel", "INFO", "--hostname", f"{node}@%h", "--without-gossip", "--without-mingle",
        ]

    return {
        "web": [python, "-m", "gunicorn", "-c", "gunicorn.conf.py", "orders_project.wsgi"],
        "relay": [python, "manage.py", "publish_pending_events"],
        "bridge": [python, "manage.py", "run_kafka_bridge"],
        "reconciler": [python, "manage.py", "run_reconciler"],
        # Threads: the tasks wait on I/O, and one process keeps one metrics registry. Gossip and
        # mingle talk over broadcast exchanges, which the SQL transport lacks; workers need nothing
        # from each other. --serves picks the queue (orders_project/celery.py): the pipeline's, or
        # the webhooks', taken by a worker of its own so that slow receivers never hold the
        # pipeline's threads.
        "worker": celery_worker(serves="pipeline", node=worker_name or "worker"),
        "webhook-worker": celery_worker(serves="webhooks", node=worker_name or "webhook-worker"),
    }
