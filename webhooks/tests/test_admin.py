"""The admin's webhook pages: endpoints without their secrets, deliveries with their attempts and
filters, and Redeliver, which needs its own permission and queues a send on the webhooks queue of
the real Celery broker. Real users, logged in through the test client."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone

from common.admin import OPERATORS, ensure_operator_groups
from devtools.harness.sample_orders import create_test_order
from devtools.harness.bridge import celery_broker, task_args, task_messages
from devtools.harness.process_group import celery_broker_url
from orders_project.celery import app as celery_app
from webhooks import services
from webhooks.models import DeliveryStatus, WebhookDelivery

pytestmark = pytest.mark.django_db

REDELIVER = "webhooks.redeliver_webhookdelivery"
DELIVERIES = "/admin/webhooks/webhookdelivery/"


@pytest.fixture(autouse=True)
def one_attempt(settings):
    # One attempt of the schedule: a failed attempt fails the delivery for good.
    settings.WEBHOOKS = {**settings.WEBHOOKS, "retry_schedule": [0.0], "allow_http": True, "allow_loopback": True}


def staff(client, *permissions: str):
    user = get_user_model().objects.create_user(f"operator-{len(permissions)}", is_staff=True)
    codenames = [permission.split(".")[1] for permission in permissions]
    user.user_permissions.set(Permission.objects.filter(codename__startswith="view_") | Permission.objects.filter(codename__in=codenames))
    client.force_login(user)
    return client


def delivery_of(endpoint, *, name: str, answer: int | None = None) -> WebhookDelivery:
    """The delivery of a new order's ORDER_CREATED to ``endpoint``, after one attempt answered ``answer``."""
    order = create_test_order(user_id=name, email=f"{name}@example.com", correlation_id=f"corr-{name}")
    delivery = WebhookDelivery.objects.get(endpoint=endpoint, order_id=order.id)
    if answer is not None:
        services.record_attempt(
            delivery=delivery, answer=services.Answer(status_code=answer, excerpt=f"answered {answer}"), started=timezone.now(), duration=0.02
        )
        delivery.refresh_from_db()
    return delivery


@pytest.fixture
def webhook_sends(tmp_path):
    """The send tasks queued on the webhooks queue, as a function: a Celery app with the project's
    routes on a broker of this test's own (the configured one, the SQL one in a new file)."""
    with celery_broker(celery_broker_url(work_dir=tmp_path)) as app:
        app.conf.task_routes = celery_app.conf.task_routes
        task_messages(app, queue=settings.WEBHOOKS["queue"])  # whatever earlier runs left on a shared broker

        def queued() -> list[tuple[str, list]]:
            return [(message.headers["task"], task_args(message)) for message in task_messages(app, queue=settings.WEBHOOKS["queue"])]

        yield queued


def test_endpoints_show_url_owner_state_and_why_disabled_but_never_a_secret(admin_client):
    endpoint = services.create_endpoint(owner=None, url="http://127.0.0.1:9/hooks", event_types=[])
    services.rotate_secret(endpoint=endpoint)
    services.update_endpoint(endpoint=endpoint, enabled=False)

    listing = admin_client.get("/admin/webhooks/webhookendpoint/").content.decode()
    page = admin_client.get(f"/admin/webhooks/webhookendpoint/{endpoint.pk}/change/").content.decode()

    assert "http://127.0.0.1:9/hooks" in listing and "disabled by its client" in listing
    assert "disabled by its client" in page
    for secret in (endpoint.secret, endpoint.previous_secret):
        assert secret.startswith("whsec_")
        assert secret not in listing and secret not in page
        assert secret.removeprefix("whsec_") not in page


def test_deliveries_are_filtered_by_status_event_type_and_endpoint_and_show_their_attempts(admin_client):
    first = services.create_endpoint(owner=None, url="http://127.0.0.1:9/first", event_types=[])
    second = services.create_endpoint(owner=None, url="http://127.0.0.1:9/second", event_types=[])
    failed = delivery_of(first, name="failed", answer=500)
    pending = WebhookDelivery.objects.get(endpoint=second, order_id=failed.order_id)

    def listed(query: str) -> set[str]:
        page = admin_client.get(f"{DELIVERIES}?{query}").content.decode()
        return {name for name, delivery in (("failed", failed), ("pending", pending)) if str(delivery.pk) in page}

    assert failed.status == DeliveryStatus.FAILED
    assert listed("status__exact=FAILED") == {"failed"}
    assert listed("status__exact=PENDING") == {"pending"}
    assert listed("event_type__exact=ORDER_CREATED") == {"failed", "pending"}
    assert listed("event_type__exact=ORDER_PAID") == set()
    assert listed(f"endpoint__id__exact={second.pk}") == {"pending"}
    page = admin_client.get(f"{DELIVERIES}{failed.pk}/change/").content.decode()
    assert "answered 500" in page and ">500<" in page


def test_redeliver_makes_the_delivery_pending_again_and_queues_its_send_on_the_webhooks_queue(client, webhook_sends):
    endpoint = services.create_endpoint(owner=None, url="http://127.0.0.1:9/hooks", event_types=[])
    delivery = delivery_of(endpoint, name="redeliver", answer=503)
    operator = staff(client, REDELIVER)

    response = operator.post(DELIVERIES, {"action": "redeliver", "_selected_action": [str(delivery.pk)]}, follow=True)

    assert "Redelivery queued: 1" in response.content.decode()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.attempt_log.count()) == (DeliveryStatus.PENDING, 0, 1)
    assert webhook_sends() == [("webhooks.send_delivery", [str(delivery.pk)])]


def test_without_its_permission_redeliver_is_not_offered_and_a_post_of_it_does_nothing(client, webhook_sends):
    endpoint = services.create_endpoint(owner=None, url="http://127.0.0.1:9/hooks", event_types=[])
    delivery = delivery_of(endpoint, name="viewer", answer=500)
    viewer = staff(client)

    form = viewer.get(DELIVERIES).context["action_form"]
    viewer.post(DELIVERIES, {"action": "redeliver", "_selected_action": [str(delivery.pk)]}, follow=True)

    assert form is None or "redeliver" not in dict(form.fields["action"].choices)
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED
    assert webhook_sends() == []


def test_operators_may_redeliver_and_see_the_webhook_pages():
    granted = ensure_operator_groups()[OPERATORS]
    assert REDELIVER in granted
    assert {"webhooks.view_webhookendpoint", "webhooks.view_webhookdelivery", "webhooks.view_webhookattempt"} <= set(granted)
