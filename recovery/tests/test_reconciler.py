"""The reconciler's pass and its gauges against the real database."""

from __future__ import annotations

import datetime as dt
import json
import threading

import pytest
from django.db import connections
from django.utils import timezone
from prometheus_client import REGISTRY

from devtools.broker import free_port
from devtools.harness.waiting import wait_until
from orders.models import Order
from payments.simulator import PROVIDER_DATABASE
from recovery.reconciler import ProviderCheck, publish_order_gauges, run_reconciler
from recovery.redrives import RedriveOutcome
from recovery.tests.support import NOTHING_DOWNSTREAM, POLICY, age, new_order, publish_all, reconcile

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


@pytest.mark.django_db(transaction=True)
def test_the_reconciler_goes_on_once_a_restarted_server_closed_its_provider_connection():
    """A database server that restarts closes every connection the reconciler holds, the
    provider's ledger's among them (whose records each pass checks first): the next passes
    connect again, rather than fail on the closed connection for as long as the process lives."""
    stop = threading.Event()
    passes = []

    def read_downstream():
        passes.append(timezone.now())
        if len(passes) == 1:
            connections[PROVIDER_DATABASE].connection.close()  # what the server's restart did to it
        return NOTHING_DOWNSTREAM

    def run() -> None:
        try:
            run_reconciler(
                stop=stop,
                policy=POLICY,
                read_downstream=read_downstream,
                interval=0.05,
                retention=dt.timedelta(days=7),
                purge_batch_size=100,
                purge_max_batches=1,
                metrics_port=free_port(),
                provider_check=ProviderCheck(interval=0.0, lookback=dt.timedelta(days=1)),
            )
        finally:
            connections.close_all()

    reconciler = threading.Thread(target=run, daemon=True)
    reconciler.start()
    try:
        wait_until(lambda: len(passes) >= 3, timeout=30, message="no pass after the provider's connection was closed")
    finally:
        stop.set()
        reconciler.join(timeout=30)
