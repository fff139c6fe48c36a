"""Webhooks under faults (the fault suite: PostgreSQL, Redis): the webhooks queue's worker
SIGKILLed while a receiver holds its request; the delivery still lands, with the same id."""

from __future__ import annotations

import pytest
from standardwebhooks import Webhook

from devtools.harness.audit import wait_for_completion
from devtools.harness.process_group import ProcessGroup
from devtools.harness.sample_orders import post_order
from devtools.harness.waiting import wait_until
from devtools.harness.webhook_receivers import HOLD
from webhooks import services
from webhooks.models import WebhookDelivery

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e, pytest.mark.fault]

REDISPATCH_AFTER = 10


@pytest.fixture
def system(django_db_setup, django_db_blocker, kafka_broker, tmp_path):
    group, port = ProcessGroup.with_web_port(
        kafka_brokers=kafka_broker.bootstrap_servers,
        work_dir=tmp_path,
        # The reconciler hands a delivery to a new task this long after the one that held it was
        # lost (120 s by default), looking every second.
        WEBHOOKS_REDISPATCH_AFTER=str(REDISPATCH_AFTER),
        RECONCILER_INTERVAL="1",
        # Redis gives a killed worker's unacknowledged tasks back after this: not within the test,
        # so the delivery can only land through the reconciler.
        CELERY_VISIBILITY_TIMEOUT="3600",
    )
    with django_db_blocker.unblock():
        group.start_system(port=port)
        group.start_webhook_worker()
        yield group
        group.stop_all()


def test_webhook_worker_killed_mid_delivery_and_restarted_the_delivery_lands_with_the_same_id(system, receiver_of):
    receiver = receiver_of([HOLD], then=200)
    endpoint = services.create_endpoint(owner=None, url=receiver.url, event_types=["order.created"])
    order_id = post_order(system.base_url, user_id="hook_fault")
    receiver.wait_for(1)

    system.kill("webhook-worker")
    assert len(receiver.received) == 1
    system.start_webhook_worker()
    wait_for_completion([order_id])

    delivery = WebhookDelivery.objects.get(order_id=order_id, endpoint=endpoint)
    wait_until(
        lambda: WebhookDelivery.objects.filter(pk=delivery.pk, status="SUCCEEDED").exists(),
        timeout=REDISPATCH_AFTER + 60,
        message="the delivery did not land",
    )
    # The killed attempt left no record; the one the reconciler's task made landed.
    assert [attempt.status_code for attempt in delivery.attempt_log.all()] == [200]
    assert len(receiver.received) >= 2
    assert {request.headers["webhook-id"] for request in receiver.received} == {str(delivery.event_id)}
    for request in receiver.received:
        Webhook(endpoint.secret).verify(request.body, request.headers)
    assert any(e["event"] == "reconciler_pass" and e["webhooks_dispatched"] for e in system.log_events("reconciler"))
