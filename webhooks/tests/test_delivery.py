"""Webhook deliveries end to end within one process: recorded with the event, sent signed to a
real receiver on loopback, retried on the schedule, verified as a receiver would."""

from __future__ import annotations

import json

import pytest
from standardwebhooks import Webhook

from devtools.harness.sample_orders import create_test_order
from webhooks import services
from webhooks.models import WebhookDelivery

pytestmark = pytest.mark.django_db


def test_a_receiver_answering_500_500_200_gets_three_verifiable_attempts_with_one_webhook_id(receiver_of, settings):
    settings.WEBHOOKS = {**settings.WEBHOOKS, "retry_schedule": [0, 0, 0], "allow_http": True, "allow_loopback": True}
    receiver = receiver_of([500, 500, 200])
    endpoint = services.create_endpoint(owner=None, url=receiver.url, event_types=["order.created"])

    order = create_test_order(user_id="hook", email="hook@example.com", quantity=1, price="5.00", correlation_id="c")

    delivery = WebhookDelivery.objects.get(order_id=order.id)
    for _ in range(3):
        services.send_delivery(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("SUCCEEDED", 3)
    assert [attempt.status_code for attempt in delivery.attempt_log.all()] == [500, 500, 200]
    assert {headers["webhook-id"] for headers, _body in receiver.received} == {str(delivery.event_id)}
    for headers, body in receiver.received:
        payload = Webhook(endpoint.secret).verify(body, headers)
        assert (payload["type"], payload["data"]["order_id"]) == ("order.created", str(order.id))
    assert json.loads(receiver.received[0][1]) == json.loads(delivery.body)
