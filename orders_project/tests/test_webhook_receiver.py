"""``python -m devtools.webhook_receiver``, run as a developer runs it (README.md, "Webhooks"):
the service's signed deliveries are printed, one JSON line each, and answered 204; what does not
verify is answered 401, described on stderr and not printed."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from devtools.broker import free_port
from devtools.harness.sample_orders import create_test_order
from orders_project.config import BASE_DIR
from webhooks import services
from webhooks.models import DeliveryStatus, WebhookDelivery

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def local_receivers(settings):
    settings.WEBHOOKS = {**settings.WEBHOOKS, "allow_http": True, "allow_loopback": True}


@pytest.fixture
def developer_receiver():
    """start(port, secret): the receiver's process, once it listens."""
    processes = []

    def start(*, port: int, secret: str) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-m", "devtools.webhook_receiver", "--secret", secret, "--port", str(port)],
            cwd=BASE_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        assert process.stderr.readline().startswith(f"receiving webhooks on http://127.0.0.1:{port}/")
        return process

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


def stopped(process: subprocess.Popen) -> tuple[str, str]:
    """What the process wrote after what was read, once it is stopped."""
    process.terminate()
    return process.communicate(timeout=10)


def test_a_verified_delivery_is_printed_as_one_json_line_and_answered_204(developer_receiver):
    port = free_port()
    endpoint = services.create_endpoint(owner=None, url=f"http://127.0.0.1:{port}/hooks", event_types=[])
    receiver = developer_receiver(port=port, secret=endpoint.secret)
    order = create_test_order(user_id="dev", email="dev@example.com", correlation_id="corr-dev")
    delivery = WebhookDelivery.objects.get(endpoint=endpoint, order_id=order.id)

    services.send_delivery(delivery_id=delivery.pk)

    delivery.refresh_from_db()
    assert (delivery.status, delivery.last_status_code) == (DeliveryStatus.SUCCEEDED, 204)
    printed = json.loads(receiver.stdout.readline())
    assert printed == {"webhook_id": str(delivery.event_id), **json.loads(delivery.body)}
    assert (printed["type"], printed["data"]["order_id"]) == ("order.created", str(order.id))
    assert stopped(receiver)[0] == ""  # one line per delivery


def test_a_delivery_signed_with_another_secret_or_changed_is_refused_with_401_and_not_printed(developer_receiver):
    port = free_port()
    url = f"http://127.0.0.1:{port}/hooks"
    expected = services.create_endpoint(owner=None, url=url, event_types=[])
    stranger = services.create_endpoint(owner=None, url=url, event_types=[])
    receiver = developer_receiver(port=port, secret=expected.secret)
    order = create_test_order(user_id="dev", email="dev@example.com", correlation_id="corr-dev")

    services.send_delivery(delivery_id=WebhookDelivery.objects.get(endpoint=stranger, order_id=order.id).pk)
    delivery = WebhookDelivery.objects.get(endpoint=expected, order_id=order.id)
    headers = {
        "webhook-id": str(delivery.event_id),
        "webhook-timestamp": str(int(delivery.created_at.timestamp())),
        "webhook-signature": services.signature_header(
            endpoint=expected, msg_id=str(delivery.event_id), timestamp=delivery.created_at, body=delivery.body, now=delivery.created_at
        ),
    }
    changed = delivery.body.replace('"status": "CREATED"', '"status": "PAID"').encode()
    assert changed != delivery.body.encode()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(url, data=changed, headers=headers, method="POST"), timeout=10)

    assert refused.value.code == 401
    assert WebhookDelivery.objects.get(endpoint=stranger, order_id=order.id).last_status_code == 401
    out, err = stopped(receiver)
    assert out == ""
    assert err.count("refused (No matching signature found)") == 2
