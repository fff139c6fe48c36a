"""Outcomes of the pipeline's task runs, counted from Celery's signals in the worker."""

from celery.signals import task_failure, task_retry, task_success
from prometheus_client import Counter

TASKS = Counter("pipeline_tasks_total", "Pipeline task runs by outcome", ["task", "outcome"])


@task_success.connect
def count_success(sender=None, **_kwargs) -> None:
    TASKS.labels(sender.name, "success").inc()


@task_retry.connect
def count_retry(sender=None, **_kwargs) -> None:
    TASKS.labels(sender.name, "retry").inc()


@task_failure.connect
def count_failure(sender=None, **_kwargs) -> None:
    TASKS.labels(sender.name, "failure").inc()
