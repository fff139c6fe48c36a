"""The reconciler's pass and its gauges against the real database."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.utils import timezone
from prometheus_client import REGISTRY

from orders.models import Order
from recovery.reconciler import publish_order_gauges
from recovery.redrives import RedriveOutcome
from recovery.tests.support import POLICY, age, new_order, publish_all, reconcile

pytestmark = pytest.mark.django_db


def test_gauges_show_unfinished_and_stuck_orders_with_the_oldest_age():
    new_order()
    stuck = new_order()
    Order.objects.filter(pk=stuck.pk).update(updated_at=timezone.now() - dt.timedelta(seconds=100))

    publish_order_gauges(policy=POLICY)

    def sample(name: str, status: str) -> float:
        return REGISTRY.get_sample_value(name, {"status": status})

    assert sample("orders_unfinished", "CREATED") == 2
    assert sample("orders_stuck", "CREATED") == 1
    assert sample("orders_unfinished_oldest_age_seconds", "CREATED") >= 100
    assert sample("orders_unfinished", "PROCESSING") == 0


def test_a_pass_counts_each_orders_outcome_under_the_name_its_log_line_shows():
    order = new_order()
    age(seconds=600)
    waiting = reconcile()  # its event still waits in the outbox: the relay's work
    assert waiting.orders == {RedriveOutcome.SKIPPED: 1}
    assert not waiting.did_anything

    publish_all()
    age(seconds=31)
    redriven = reconcile()

    assert redriven.did_anything
    # The reconciler_pass log line renders the counts with json.dumps, as structlog's JSONRenderer does.
    assert json.dumps(dict(redriven.orders)) == '{"redriven": 1}'
    assert order.redrives.count() == 1
