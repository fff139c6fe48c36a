"""Webhook deliveries end to end within one process: recorded with the event, sent signed to a
real receiver on loopback, retried on the schedule, verified as a receiver would."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook

from devtools.harness.sample_orders import create_test_order
from webhooks import services
from webhooks.models import WebhookDelivery

pytestmark = pytest.mark.django_db


class Receiver:
    """An HTTP receiver on a free loopback port answering the given status codes in turn."""

    def __init__(self, answers: list[int]):
        self.answers = list(answers)
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                self.send_response(receiver.answers.pop(0) if receiver.answers else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_of():
    receivers = []

    def start(answers):
        receivers.append(Receiver(answers))
        return receivers[-1]

    yield start
    for receiver in receivers:
        receiver.close()


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
