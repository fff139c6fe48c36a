"""Notifications: one message per event and channel, recorded and announced once."""

from __future__ import annotations


import pytest
from django.core import mail

from events.embedded_broker import free_port
from events.models import OutboxEvent
from notifications import services
from notifications.models import Notification
from orders.models import Order
from orders_project.testing import create_test_order

pytestmark = pytest.mark.django_db


@pytest.fixture
def envelope():
    order = create_test_order(
        user_id="note_user", email="note@example.com", quantity=2, price="4.00", correlation_id="corr-note", product_name="Widget"
    )
    return OutboxEvent.objects.get(key=str(order.id)).payload


@pytest.fixture
def email_to_memory(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


def test_email_is_sent_recorded_and_announced_once(envelope, email_to_memory):
    assert services.send_event_notifications(envelope=envelope) == ["email"]
    assert services.send_event_notifications(envelope=envelope) == []

    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["note@example.com"]
    assert message.from_email == "noreply@ordersystem.com"
    assert envelope["order"]["id"] in message.subject
    assert "Total: 8.00" in message.body
    assert message.extra_headers["Message-ID"].startswith(f"<{envelope['event_id']}.email@")
    notification = Notification.objects.get()
    assert (notification.channel, notification.status, notification.source_event_type) == ("email", "SENT", "ORDER_CREATED")
    announced = OutboxEvent.objects.get(event_type="NOTIFICATION_SENT")
    assert announced.topic == "notifications"
    assert announced.payload["details"]["source_event_id"] == envelope["event_id"]
    assert announced.payload["metadata"]["correlation_id"] == "corr-note"
    timeline = Order.objects.get(pk=envelope["order"]["id"]).timeline
    assert timeline.filter(event_type="NOTIFICATION_SENT", event_id=announced.event_id).exists()


def test_sms_channel_when_enabled_goes_through_the_sms_backend(envelope, email_to_memory, settings):
    settings.NOTIFICATION = {**settings.NOTIFICATION, "sms_enabled": True}

    assert services.send_event_notifications(envelope=envelope) == ["email", "sms"]

    assert sorted(Notification.objects.values_list("channel", "recipient")) == [("email", "note@example.com"), ("sms", "note_user")]
    assert OutboxEvent.objects.filter(event_type="NOTIFICATION_SENT").count() == 2


def test_disabled_channels_send_nothing(envelope, email_to_memory, settings):
    settings.NOTIFICATION = {**settings.NOTIFICATION, "email_enabled": False}

    assert services.send_event_notifications(envelope=envelope) == []
    assert not mail.outbox


def test_an_unreachable_mail_server_is_a_retryable_failure_with_nothing_recorded(envelope, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", free_port(), 2

    with pytest.raises(services.DeliveryFailed):
        services.send_event_notifications(envelope=envelope)
    assert not Notification.objects.exists()


def test_giving_up_records_failure_and_a_dead_letter(envelope):
    services.record_delivery_failure(envelope=envelope, error="DeliveryFailed: smtp down")

    notification = Notification.objects.get()
    assert (notification.status, notification.error) == ("FAILED", "DeliveryFailed: smtp down")
    dead_letter = OutboxEvent.objects.get(topic="dlq")
    assert dead_letter.headers["dlq_reason"] == "notification_gave_up"
    assert dead_letter.payload == envelope
    # A failure recorded is final for that event and channel: no later send.
    assert services.send_event_notifications(envelope=envelope) == []
