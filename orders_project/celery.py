"""The Celery app: ``celery -A orders_project worker``.

Log context (``correlation_id``, ``order_id``, ``event_id``) travels in the task message
headers: bound values are copied into every task published and bound again in the worker
before the task runs, so a chain of tasks logs with the ids of the event that started it.
"""

from __future__ import annotations

import logging.config
import os
import random
from typing import Callable, TypeVar

import structlog
from celery import Celery
from celery.signals import (
    before_task_publish,
    setup_logging,
    task_failure,
    task_postrun,
    task_prerun,
    task_received,
    task_retry,
    task_success,
    worker_init,
)
from django.db import InterfaceError as DatabaseInterfaceError
from kombu.transport import sqlalchemy as sql_transport

from events.contract import InvalidEvent

from orders_project.metrics import TASKS, serve_process_metrics
from django.db import OperationalError as DatabaseOperationalError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orders_project.settings")

app = Celery("orders_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# kombu's SQL transport hands every transport option to SQLAlchemy's create_engine(), so its
# poll interval (1 s by default: a second of latency per task) can only be set on the class.
sql_transport.Transport.polling_interval = app.conf.sql_broker_poll_interval

LOG_CONTEXT_KEYS = ("correlation_id", "order_id", "event_id")
task_log = structlog.get_logger("orders_project.tasks")
T = TypeVar("T")


def _header(key: str) -> str:
    # Prefixed: Celery's own message properties already include a "correlation_id" (the task id).
    return f"log_{key}"


@setup_logging.connect
def use_django_logging(**_kwargs) -> None:
    """Celery's own log lines come out as the same JSON as everything else."""
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


@before_task_publish.connect
def carry_log_context(headers: dict, **_kwargs) -> None:
    bound = structlog.contextvars.get_contextvars()
    for key in LOG_CONTEXT_KEYS:
        if key in bound:
            headers.setdefault(_header(key), bound[key])


def _log_context(headers) -> dict[str, str]:
    return {key: headers.get(_header(key)) for key in LOG_CONTEXT_KEYS if headers.get(_header(key))}


# Celery's own "Task ... received" and "... succeeded" lines are written where the task's log
# context is not bound; these take their place (LOGGING silences the originals).
@task_received.connect
def log_task_received(request, **_kwargs) -> None:
    task_log.info("task_received", task=request.name, task_id=request.id, **_log_context(request.request_dict))


@task_prerun.connect
def bind_log_context(task, **_kwargs) -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(task=task.name, task_id=task.request.id, **_log_context(task.request))


@task_postrun.connect
def log_task_done_and_clear_context(state=None, **_kwargs) -> None:
    task_log.info("task_done", state=state)
    structlog.contextvars.clear_contextvars()


@worker_init.connect
def serve_worker_metrics(**_kwargs) -> None:
    from django.conf import settings

    serve_process_metrics(port=settings.METRICS["worker_port"], process="worker")


@task_success.connect
def count_success(sender=None, **_kwargs) -> None:
    TASKS.labels(sender.name, "success").inc()


@task_retry.connect
def count_retry(sender=None, **_kwargs) -> None:
    TASKS.labels(sender.name, "retry").inc()


@task_failure.connect
def count_failure(sender=None, **_kwargs) -> None:
    TASKS.labels(sender.name, "failure").inc()


class TransientError(Exception):
    """A failure worth retrying: a timeout, a dropped connection, a service briefly away."""


# Database errors here are connection-level (a restart, a failover, a lock timeout).
TRANSIENT_ERRORS = (TransientError, DatabaseOperationalError, DatabaseInterfaceError)


def retry_delay(*, retries: int) -> float:
    """Exponential backoff with full jitter: spreads retries of many tasks that failed together."""
    from django.conf import settings

    ceiling = min(settings.CELERY_TASK_RETRY_BACKOFF_MAX, settings.CELERY_TASK_RETRY_BACKOFF * 2**retries)
    return random.uniform(0, ceiling)


def run_with_retries(
    task,
    *,
    step: Callable[[], T],
    give_up: Callable[[Exception], None],
    refuse: Callable[[InvalidEvent], None] | None = None,
    retry_args: tuple | None = None,
) -> T | None:
    """Run a pipeline step; retry transient errors, and after the last retry call ``give_up``.

    An event the step refuses to act on (``InvalidEvent``: the database does not vouch for it)
    goes to ``refuse`` at once, if given, which sends it to dlq and changes nothing else.

    ``give_up`` records the failure visibly (a parked order, a failed notification, a dlq
    event); an error that is not transient (a bug, data the step cannot handle) goes there at
    once. If the failure cannot be recorded either (the database is still away), the task is
    retried once more rather than acknowledged with nothing written. ``retry_args`` replace the
    task's arguments in the retry (the part of its work still to do); None keeps them.
    """
    logger = structlog.get_logger(__name__)
    try:
        return step()
    except InvalidEvent as exc:
        if refuse is None:
            raise
        logger.warning("event_refused", reason=exc.reason, error=exc.error)
        refuse(exc)
        return None
    except TRANSIENT_ERRORS as exc:
        retries = task.request.retries
        if retries < task.max_retries:
            logger.warning("task_retrying", error=f"{type(exc).__name__}: {exc}", retries=retries + 1)
            raise task.retry(args=retry_args, exc=exc, countdown=retry_delay(retries=retries)) from exc
        try:
            give_up(exc)
            TASKS.labels(task.name, "gave_up").inc()
        except TRANSIENT_ERRORS as recording_error:
            raise task.retry(
                args=retry_args, exc=recording_error, countdown=retry_delay(retries=retries), max_retries=retries + 1
            ) from recording_error
        return None
    except Exception as exc:
        logger.exception("task_step_failed")
        give_up(exc)
        TASKS.labels(task.name, "gave_up").inc()
        return None
