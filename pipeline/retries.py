"""How a pipeline step runs: transient errors are retried with backoff, the last failure is
recorded by the step's ``give_up``, an event the database does not vouch for is refused.

Steps take the running Celery task (``bind=True``), never the Celery app.
"""

from __future__ import annotations

import random
from typing import Callable, TypeVar

import structlog

from common.errors import TRANSIENT_ERRORS, TransientError, describe
from events.contract import Event, InvalidEvent
from pipeline.metrics import TASKS

logger = structlog.get_logger(__name__)
T = TypeVar("T")


class OrdersUnfinished(TransientError):
    """Orders of a batch step that met a transient error: the retry carries only their events."""

    def __init__(self, failures: list[tuple[Event, Exception]]):
        super().__init__("; ".join(f"order {event.order_id}: {describe(exc)}" for event, exc in failures))
        self.failures = failures
        self.retry_args = ([event.payload for event, _error in failures],)


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
) -> T | None:
    """Run a pipeline step; retry transient errors, and after the last retry call ``give_up``.

    An event the step refuses to act on (``InvalidEvent``: the database does not vouch for it)
    goes to ``refuse`` at once, if given, which sends it to dlq and changes nothing else.

    ``give_up`` records the failure visibly (a parked order, a failed notification, a dlq
    event); an error that is not transient (a bug, data the step cannot handle) goes there at
    once. If the failure cannot be recorded either (the database is still away), the task is
    retried once more rather than acknowledged with nothing written. A transient error that did
    part of the work says what is left (``TransientError.retry_args``): the retry carries only that.
    """
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
        retry_args = getattr(exc, "retry_args", None)
        if retries < task.max_retries:
            logger.warning("task_retrying", error=describe(exc), retries=retries + 1)
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
