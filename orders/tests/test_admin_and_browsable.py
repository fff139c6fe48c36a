"""Pages people use in a browser: the admin, the browsable API, the OpenAPI schema and Swagger UI."""

from __future__ import annotations

import pytest
import yaml

from events.contract import Event
from events.models import OutboxEvent
from notifications import services as notification_services
from notifications.models import Notification
from orders import services as order_services
from payments import services as payment_services
from payments.simulator import SimulatedGateway
from payments.models import Payment

pytestmark = pytest.mark.django_db


@pytest.fixture
def order_id(api_client, seed_order):
    return api_client.post("/orders", seed_order, format="json").json()["order_id"]


def test_admin_pages_where_nothing_can_be_saved_have_no_save_button(staff_client, order_id):
    html = staff_client.get(f"/admin/orders/order/{order_id}/change/").content.decode()

    assert order_id in html
    assert 'name="_save"' not in html and 'name="_continue"' not in html


def test_admin_lists_are_newest_first_with_the_order_id_on_one_line(staff_client, api_client, seed_order):
    first = api_client.post("/orders", seed_order, format="json").json()["order_id"]
    second = api_client.post("/orders", seed_order, format="json").json()["order_id"]

    orders = staff_client.get("/admin/orders/order/").content.decode()
    outbox = staff_client.get("/admin/events/outboxevent/").content.decode()

    assert orders.index(second) < orders.index(first)
    assert f'<code style="white-space: nowrap">{second}</code>' in orders
    assert outbox.index(second) < outbox.index(first)


def test_admin_order_list_shows_status_user_and_total(staff_client, order_id):
    response = staff_client.get("/admin/orders/order/")

    assert response.status_code == 200
    html = response.content.decode()
    assert order_id in html
    assert "customer_123" in html
    assert "75.97" in html
    assert "CREATED" in html


def test_admin_order_list_filters_and_searches(staff_client, order_id):
    assert order_id in staff_client.get("/admin/orders/order/?status__exact=CREATED").content.decode()
    assert order_id not in staff_client.get("/admin/orders/order/?status__exact=PAID").content.decode()
    assert order_id in staff_client.get("/admin/orders/order/?q=prod_002").content.decode()
    assert order_id not in staff_client.get("/admin/orders/order/?q=nobody").content.decode()


def test_admin_order_page_shows_items_and_timeline_read_only(staff_client, order_id):
    response = staff_client.get(f"/admin/orders/order/{order_id}/change/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "Premium Widget" in html
    assert "Standard Widget" in html
    assert "ORDER_CREATED" in html
    assert 'name="items-0-quantity"' not in html  # items are shown, not editable


def test_admin_outbox_pages(staff_client, order_id):
    event = OutboxEvent.objects.get()

    assert staff_client.get("/admin/events/outboxevent/").status_code == 200
    assert staff_client.get(f"/admin/events/outboxevent/{event.pk}/change/").status_code == 200


def test_admin_requires_staff(client, order_id):
    response = client.get("/admin/orders/order/")

    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_browsable_api_renders_html(staff_client, order_id):
    for path in ["/orders/", f"/orders/{order_id}/", f"/orders/{order_id}/events/", "/"]:
        response = staff_client.get(path, HTTP_ACCEPT="text/html")
        assert response.status_code == 200, path
        assert response["Content-Type"].startswith("text/html")
        assert "Django REST framework" in response.content.decode()


def test_openapi_schema_and_swagger_ui(client):
    schema = yaml.safe_load(client.get("/api/schema/").content)

    assert schema["openapi"].startswith("3.")
    assert {"/orders/", "/orders/{id}/", "/orders/{id}/status/", "/orders/{id}/events/"} <= set(schema["paths"])
    create = schema["paths"]["/orders/"]["post"]
    assert "201" in create["responses"]
    assert any(p["name"] == "Idempotency-Key" for p in create["parameters"])
    swagger = client.get("/api/docs/")
    assert swagger.status_code == 200
    assert "swagger-ui" in swagger.content.decode()


def test_order_page_links_to_its_payments_and_notifications_which_render(staff_client, order_id, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    envelope = OutboxEvent.objects.get().payload
    order_services.start_processing(order_id=order_id, event_id=envelope["event_id"], source="test")
    payment_services.charge_order(
        order_id=order_id,
        event_id=envelope["event_id"],
        source="test",
        gateway=SimulatedGateway(success_rate=1.0, timeout_rate=0.0, seed="admin"),
    )
    notification_services.send_event_notifications(event=Event(envelope))

    html = staff_client.get(f"/admin/orders/order/{order_id}/change/").content.decode()

    for path in ["/admin/payments/payment/", "/admin/notifications/notification/"]:
        assert f'href="{path}?q={order_id}"' in html
        listing = staff_client.get(f"{path}?q={order_id}")
        assert listing.status_code == 200
        assert f"Order {order_id} (PAID)" in listing.content.decode()
    payment = Payment.objects.get()
    notification = Notification.objects.get()
    assert staff_client.get(f"/admin/payments/payment/{payment.pk}/change/").status_code == 200
    assert staff_client.get(f"/admin/notifications/notification/{notification.pk}/change/").status_code == 200
    assert staff_client.get("/admin/events/inboxentry/").status_code == 200
    assert staff_client.get("/admin/payments/simulatedcharge/").status_code == 200
    assert "PAID" in staff_client.get("/admin/orders/order/?status__exact=PAID").content.decode()
