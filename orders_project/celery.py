"""The Celery app: ``celery -A orders_project worker``.

Log context (``correlation_id``, ``order_id``, ``event_id``) travels in the task message
headers: bound values are copied into every task published and bound again in the worker
before the task runs, so a chain of tasks logs with the ids of the event that started it.
"""

from __future__ import annotations

import logging.config
import os
import time

import click
import structlog
from celery import Celery
from celery.signals import before_task_publish, setup_logging, task_postrun, task_prerun, task_received, worker_init
from kombu.transport import sqlalchemy as sql_transport

from common.tracing import setup_tracing
from messaging.progress import SENT_AT_HEADER

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orders_project.settings")

app = Celery("orders_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# What a worker process takes (``--serves``): the pipeline's queue (orders, payments,
# notifications, dead letters) or the webhooks' queue, whose sends wait on receivers: a worker of
# their own keeps a slow or dead receiver from holding the pipeline's threads.
PIPELINE, WEBHOOKS = "pipeline", "webhooks"
app.user_options["worker"].add(
    click.Option(
        ["--serves"],
        type=click.Choice([PIPELINE, WEBHOOKS]),
        default=PIPELINE,
        help="The queue this worker takes: the pipeline's (celery.queue) or the webhooks' (webhooks.queue).",
    )
)

# Seconds between a worker's looks for new tasks on the SQL broker of the local default (Redis
# pushes them at once).
SQL_BROKER_POLL_INTERVAL = 0.05
# order_ids: the orders of a task that several orders take together.
LOG_CONTEXT_KEYS = ("correlation_id", "order_id", "event_id", "order_ids")
task_log = structlog.get_logger("orders_project.tasks")


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
    headers[SENT_AT_HEADER] = time.time()  # how long it waited in the queue (messaging.progress)
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
def prepare_worker(sender, **_kwargs) -> None:
    if sender.app is not app:
        return  # a worker of another Celery app in this process (a benchmark's no-op worker, say)
    from django.conf import settings

    # Imported here, not with this module: web's gunicorn.conf.py imports this package before it
    # sets PROMETHEUS_MULTIPROC_DIR, and prometheus_client reads that variable when first imported.
    from common.metrics import serve_process_metrics

    serves_webhooks = sender.options.get("serves") == WEBHOOKS
    process = "webhook-worker" if serves_webhooks else "worker"
    # Only its own queue (the queues are set up, the consumer not started yet): tasks routed
    # elsewhere (settings.CELERY_TASK_ROUTES) wait for the worker that serves them.
    sender.app.amqp.queues.select([settings.WEBHOOKS["queue"] if serves_webhooks else settings.CELERY_TASK_DEFAULT_QUEUE])
    # worker_init, not worker_process_init: the latter fires only in the children of the prefork
    # pool, and the worker runs the threads pool (devtools/processes.py).
    setup_tracing(process)
    # kombu's SQL transport hands every transport option to SQLAlchemy's create_engine(), so its
    # poll interval (1 s by default: a second of latency per task) can only be set on the class.
    sql_transport.Transport.polling_interval = SQL_BROKER_POLL_INTERVAL
    port = settings.METRICS["webhook_worker_port" if serves_webhooks else "worker_port"]
    serve_process_metrics(port=port, process=process)
