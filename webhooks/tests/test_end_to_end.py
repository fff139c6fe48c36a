"""Webhooks through the real pipeline: orders posted to gunicorn, their events through the relay,
a real Kafka-protocol broker and the bridge to webhooks.deliver_events and webhooks.send_delivery
on the webhooks queue, taken by a worker of its own, and on to receivers on loopback."""

from __future__ import annotations

from collections import defaultdict

import pytest
from standardwebhooks import Webhook

from devtools.harness.audit import wait_for_completion
from devtools.harness.process_group import ProcessGroup
from devtools.harness.sample_orders import post_order
from devtools.harness.waiting import wait_until
from devtools.harness.webhook_receivers import HOLD
from events.models import OutboxEvent
from messaging.routes import DELIVER_WEBHOOKS, SEND_WEBHOOK
from webhooks import services
from webhooks.models import WebhookAttempt, WebhookDelivery

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

WEBHOOK_WORKER_THREADS = 2


@pytest.fixture(scope="module")
def system(django_db_setup, django_db_blocker, kafka_broker, tmp_path_factory):
    """web, relay, bridge, the pipeline's worker and the reconciler, and the webhooks queue's
    worker, whose sends wait as long as a receiver holds them (so a dead receiver holds its threads
    for the whole test)."""
    group, port = ProcessGroup.with_web_port(kafka_brokers=kafka_broker.bootstrap_servers, work_dir=tmp_path_factory.mktemp("hooks"))
    with django_db_blocker.unblock():
        group.start_system(port=port)
        group.start_webhook_worker(WEBHOOKS_TIMEOUT="600", CELERY_CONCURRENCY=str(WEBHOOK_WORKER_THREADS))
        yield group
        group.stop_all()


def tasks_received(system, name: str) -> set[str]:
    return {e["task"] for e in system.log_events(name) if e["event"] == "task_received"}


def test_an_orders_events_reach_a_subscribed_receiver_signed_once_each_in_sequence(system, receiver_of):
    receiver = receiver_of()
    endpoint = services.create_endpoint(owner=None, url=receiver.url, event_types=[])
    order_ids = [post_order(system.base_url, user_id=f"hook_{index}") for index in range(3)]
    wait_for_completion(order_ids)

    events = {str(e.event_id): e for e in OutboxEvent.objects.filter(key__in=order_ids, event_type__in=services.WEBHOOK_TYPES)}
    assert len(events) == 3 * len(order_ids)  # created, processing, paid or payment failed
    deliveries = WebhookDelivery.objects.filter(order_id__in=order_ids)
    wait_until(lambda: deliveries.filter(status="SUCCEEDED").count() == len(events), timeout=60, message="not delivered")
    assert set(deliveries.values_list("attempts", flat=True)) == {1}

    sequences = defaultdict(list)
    for request in receiver.received:
        payload = Webhook(endpoint.secret).verify(request.body, request.headers)
        event = events[request.headers["webhook-id"]]
        assert payload["type"] == services.WEBHOOK_TYPES[event.event_type]
        assert (payload["data"]["order_id"], payload["data"]["event_id"]) == (event.key, str(event.event_id))
        sequences[event.key].append((payload["data"]["sequence"], payload["data"]["status"]))
    assert sorted(request.headers["webhook-id"] for request in receiver.received) == sorted(events)
    # Each order's sequence numbers grow with its statuses, whatever order the requests came in.
    for order_id in order_ids:
        statuses = [status for _sequence, status in sorted(sequences[order_id])]
        assert statuses[:2] == ["CREATED", "PROCESSING"] and statuses[2] in ("PAID", "PAYMENT_FAILED")
    # The webhook tasks ran on the webhooks queue's worker, never on the pipeline's (each batch's
    # deliveries are sent by its deliver task; send tasks are for later attempts).
    assert DELIVER_WEBHOOKS in tasks_received(system, "webhook-worker")
    assert not {DELIVER_WEBHOOKS, SEND_WEBHOOK} & tasks_received(system, "worker")


def test_a_receiver_that_never_answers_does_not_hold_up_the_orders(system, receiver_of):
    dead = receiver_of(then=HOLD)
    endpoint = services.create_endpoint(owner=None, url=dead.url, event_types=[])
    # Every thread of the webhooks worker is stuck in a send to the dead receiver.
    first = post_order(system.base_url, user_id="dead_first")
    wait_until(lambda: dead.held >= WEBHOOK_WORKER_THREADS, timeout=60, message="the dead receiver was not called")

    order_ids = [post_order(system.base_url, user_id=f"dead_{index}") for index in range(5)]
    wait_for_completion([first, *order_ids])

    # The orders finished while every delivery to the receiver was still pending: none of their
    # attempts has ended, and those of the later orders have not started.
    deliveries = WebhookDelivery.objects.filter(order_id__in=[first, *order_ids])
    assert deliveries.count() == 3 * (1 + len(order_ids))
    assert set(deliveries.values_list("status", flat=True)) == {"PENDING"}
    assert not WebhookAttempt.objects.filter(delivery__in=deliveries).exists()
    assert len(dead.received) == dead.held < deliveries.count()

    # The webhooks worker outlives the test (the module's system): it must be done with these
    # deliveries before the test database is flushed, or its writes deadlock with the TRUNCATE.
    # Disabled, the endpoint's deliveries fail for good on their next attempt, with no retry.
    services.update_endpoint(endpoint=endpoint, enabled=False)
    dead.close()
    wait_until(lambda: not deliveries.filter(status="PENDING").exists(), timeout=60, message="deliveries still pending")
