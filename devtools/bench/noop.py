"""A Celery app of its own for the no-op baseline: ``celery -A devtools.bench.noop worker``.

Same broker (Redis) and the same task settings as the pipeline's app (late acks, prefetch,
JSON, no results), its own queue; each task only increments a Redis counter.
"""

from __future__ import annotations

import os
import threading

import redis
from celery import Celery

BROKER_URL = os.environ.get("BENCH_CELERY_BROKER_URL", "redis://127.0.0.1:6379/5")
QUEUE = os.environ.get("BENCH_NOOP_QUEUE", "bench-noop")
COUNTER_KEY = f"{QUEUE}:done"

app = Celery("bench_noop", broker=BROKER_URL)
app.conf.update(
    task_default_queue=QUEUE,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=4,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_send_task_events=False,
    broker_transport_options={"visibility_timeout": 60},
)

_local = threading.local()


def counter() -> redis.Redis:
    if not hasattr(_local, "client"):
        _local.client = redis.Redis.from_url(BROKER_URL)
    return _local.client


@app.task(name="bench.noop")
def noop(index: int) -> None:
    counter().incr(COUNTER_KEY)
