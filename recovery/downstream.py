"""What the reconciler sees downstream of the outbox from one pass to the next: a backlog that
moves is late work, one that stays still is a sign of loss (``selectors.is_in_flight``).

The work moves when the bridge's consumer group commits further, when a handler applies an event
(the inbox grows: the database's own record of work done) or when the pipeline's Celery queue
gets shorter.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from events import selectors as event_selectors
from messaging.progress import QueueState
from recovery.metrics import BACKLOG_STILL, OLDEST_QUEUED_AGE, QUEUED_TASKS
from recovery.selectors import Downstream


class DownstreamWatch:
    """Turns what each pass reads downstream into a ``Downstream``, remembering what the pass
    before read: a reconciler that just started counts the work as moving."""

    def __init__(self) -> None:
        self._offsets: Mapping[tuple[str, int], int] = {}
        self._applied_through = 0
        self._depth: int | None = None
        self._moved_at: dt.datetime | None = None
        self._empty_since: dt.datetime | None = None

    def observe(
        self, *, bridge_offsets: Mapping[tuple[str, int], int] | None, pipeline_queue: QueueState, now: dt.datetime
    ) -> Downstream:
        applied_through = event_selectors.last_applied_id()
        moved = (
            self._moved_at is None
            or applied_through > self._applied_through
            or any(offset > self._offsets.get(partition, offset) for partition, offset in (bridge_offsets or {}).items())
            or (pipeline_queue.depth is not None and self._depth is not None and pipeline_queue.depth < self._depth)
        )
        if moved:
            self._moved_at = now
        self._applied_through = applied_through
        if bridge_offsets is not None:
            self._offsets = {**self._offsets, **bridge_offsets}
        if pipeline_queue.depth is not None:
            self._depth = pipeline_queue.depth
            if pipeline_queue.depth:
                self._empty_since = None
            elif self._empty_since is None:
                self._empty_since = now
        still_for = (now - self._moved_at).total_seconds()
        BACKLOG_STILL.set(still_for if pipeline_queue.depth else 0.0)
        return Downstream(
            bridge_offsets=bridge_offsets,
            queued_tasks=pipeline_queue.depth,
            broker_started_at=pipeline_queue.broker_started_at,
            stalled_for=still_for,
            queue_empty_for=(now - self._empty_since).total_seconds() if self._empty_since else 0.0,
        )


def publish_queue_gauges(*, queues: Mapping[str, QueueState]) -> None:
    """The backlog per Celery queue, for the dashboard; NaN (a gap) where the broker did not say."""
    for name, state in queues.items():
        QUEUED_TASKS.labels(name).set(UNKNOWN if state.depth is None else state.depth)
        if state.depth == 0:
            OLDEST_QUEUED_AGE.labels(name).set(0.0)
        else:
            OLDEST_QUEUED_AGE.labels(name).set(UNKNOWN if state.oldest_age is None else state.oldest_age)


UNKNOWN = float("nan")
