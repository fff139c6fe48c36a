"""What a receiver reads of a send: the Host header names the URL's host and port as it was given."""

from __future__ import annotations

import pytest

from devtools.harness.sample_orders import create_test_order
from webhooks import services
from webhooks.models import WebhookDelivery

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_host_header_names_the_receivers_host_and_port(settings, receiver_of, host):
    settings.WEBHOOKS = {**settings.WEBHOOKS, "allow_http": True, "allow_loopback": True}
    receiver = receiver_of([200], host=host)
    services.create_endpoint(owner=None, url=receiver.url, event_types=[])
    order = create_test_order(user_id="host", email="host@example.com", correlation_id="c")

    services.send_delivery(delivery_id=WebhookDelivery.objects.get(order_id=order.id).pk)

    (request,) = receiver.received
    headers = request.headers
    # An IPv6 address is bracketed, as in the URL: "::1:8080" would be no host a server can read.
    assert headers["Host"] == receiver.url.removeprefix("http://").removesuffix("/hooks")
