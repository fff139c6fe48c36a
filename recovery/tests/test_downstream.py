"""The reconciler's watch downstream: what counts as the work moving between passes."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone
from prometheus_client import REGISTRY

from events.models import InboxEntry
from messaging.progress import QueueState
from recovery.downstream import DownstreamWatch

pytestmark = pytest.mark.django_db

T0 = timezone.now()
OFFSETS = {("orders", 0): 10, ("payments", 1): 4}


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def watching(*, depth: int = 100) -> DownstreamWatch:
    """A watch that has seen one pass, at T0: a backlog of ``depth`` tasks."""
    watch = DownstreamWatch()
    assert watch.observe(bridge_offsets=OFFSETS, pipeline_queue=QueueState(depth=depth), now=T0).stalled_for == 0.0
    return watch


def test_a_backlog_nobody_takes_from_is_still_for_as_long_as_it_stays_so():
    watch = watching()
    for seconds in (5, 30, 65):
        downstream = watch.observe(bridge_offsets=OFFSETS, pipeline_queue=QueueState(depth=100), now=at(seconds))
        assert downstream.stalled_for == seconds
    # Kafka and the broker away say nothing either way.
    assert watch.observe(bridge_offsets=None, pipeline_queue=QueueState(depth=None), now=at(70)).stalled_for == 70


@pytest.mark.parametrize(
    "offsets, depth",
    [({("orders", 0): 11, ("payments", 1): 4}, 100), (OFFSETS, 99), ({("payments", 1): 5}, 100)],
    ids=["the bridge committed further", "the queue got shorter", "one partition of several moved"],
)
def test_the_work_moves_when_the_bridge_or_the_queue_does(offsets, depth):
    watch = watching()
    assert watch.observe(bridge_offsets=OFFSETS, pipeline_queue=QueueState(depth=100), now=at(30)).stalled_for == 30
    downstream = watch.observe(bridge_offsets=offsets, pipeline_queue=QueueState(depth=depth), now=at(40))
    assert downstream.stalled_for == 0.0
    assert (downstream.bridge_offsets, downstream.queued_tasks) == (offsets, depth)


def test_the_work_moves_when_a_handler_applies_an_event():
    watch = watching()
    InboxEntry.objects.create(handler="orders.process", event_id="6f1d3c8e-8a4b-4d2f-9a51-3f3b7e2c1a90")
    assert watch.observe(bridge_offsets=OFFSETS, pipeline_queue=QueueState(depth=100), now=at(30)).stalled_for == 0.0


def test_a_growing_queue_alone_is_not_movement():
    watch = watching()
    assert watch.observe(bridge_offsets=OFFSETS, pipeline_queue=QueueState(depth=150), now=at(30)).stalled_for == 30


def test_the_broker_start_is_passed_on():
    started = at(-5)
    downstream = watching().observe(
        bridge_offsets=OFFSETS, pipeline_queue=QueueState(depth=3, broker_started_at=started), now=at(1)
    )
    assert downstream.broker_started_at == started


def test_the_backlog_still_gauge_counts_only_while_tasks_wait():
    watch = watching(depth=0)
    assert watch.observe(bridge_offsets=OFFSETS, pipeline_queue=QueueState(depth=0), now=at(45)).stalled_for == 45
    assert REGISTRY.get_sample_value("pipeline_backlog_still_seconds") == 0
    watch.observe(bridge_offsets=OFFSETS, pipeline_queue=QueueState(depth=5), now=at(50))
    assert REGISTRY.get_sample_value("pipeline_backlog_still_seconds") == 50


def test_the_queue_counts_as_empty_from_the_first_pass_that_saw_it_so():
    watch = watching(depth=3)
    assert watch.observe(bridge_offsets=OFFSETS, pipeline_queue=QueueState(depth=0), now=at(5)).queue_empty_for == 0
    assert watch.observe(bridge_offsets=OFFSETS, pipeline_queue=QueueState(depth=0), now=at(15)).queue_empty_for == 10
    assert watch.observe(bridge_offsets=OFFSETS, pipeline_queue=QueueState(depth=1), now=at(20)).queue_empty_for == 0
    assert watch.observe(bridge_offsets=OFFSETS, pipeline_queue=QueueState(depth=0), now=at(25)).queue_empty_for == 0
