"""Outcomes of the pipeline's task runs, counted from Celery's signals in the worker."""

from celery.signals import task_failure, task_retry, task_success, worker_init
from prometheus_client import Counter

TASKS = Counter("pipeline_tasks_total", "Pipeline task runs by outcome", ["task", "outcome"])
OUTCOMES = ("success", "retry", "failure", "gave_up")


@worker_init.connect
def start_at_zero(sender=None, **_kwargs) -> None:
    """Every task and outcome from the start, at 0: rate() sees the first retry or give-up, which
    a series born at 1 would hide."""
    for name in sender.app.tasks:
        if not name.startswith("celery."):
            for outcome in OUTCOMES:
                TASKS.labels(name, outcome)


@task_success.connect
def count_success(sender=None, **_kwargs) -> None:
    TASKS.labels(sender.name, "success").inc()


@task_retry.connect
def count_retry(sender=None, **_kwargs) -> None:
    TASKS.labels(sender.name, "retry").inc()


@task_failure.connect
def count_failure(sender=None, **_kwargs) -> None:
    TASKS.labels(sender.name, "failure").inc()
