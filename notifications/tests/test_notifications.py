"""Notifications: one message per event and channel, recorded and announced once."""

from __future__ import annotations

import uuid

import pytest
from django.core import mail

from devtools.broker import free_port
from devtools.harness.sample_orders import create_test_order
from events.contract import Event, InvalidEvent
from events.models import InboxEntry, OutboxEvent
from notifications import services
from notifications.models import Notification
from orders.models import Order
from pipeline.tasks import send_notifications_batch

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
    assert services.send_event_notifications(event=Event(envelope)) == ["email"]
    assert services.send_event_notifications(event=Event(envelope)) == []

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

    assert services.send_event_notifications(event=Event(envelope)) == ["email", "sms"]

    assert sorted(Notification.objects.values_list("channel", "recipient")) == [("email", "note@example.com"), ("sms", "note_user")]
    assert OutboxEvent.objects.filter(event_type="NOTIFICATION_SENT").count() == 2


def test_disabled_channels_send_nothing(envelope, email_to_memory, settings):
    settings.NOTIFICATION = {**settings.NOTIFICATION, "email_enabled": False}

    assert services.send_event_notifications(event=Event(envelope)) == []
    assert not mail.outbox


def test_an_unreachable_mail_server_is_a_retryable_failure_recorded_unsent_and_claimed_again(envelope, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", free_port(), 2

    with pytest.raises(services.DeliveryFailed):
        services.send_event_notifications(event=Event(envelope))
    notification = Notification.objects.get()
    assert notification.status == "UNSENT" and "Connection refused" in notification.error
    assert not InboxEntry.objects.exists() and not OutboxEvent.objects.filter(event_type="NOTIFICATION_SENT").exists()

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert services.send_event_notifications(event=Event(envelope)) == ["email"]
    assert Notification.objects.get().status == "SENT" and len(mail.outbox) == 1


def test_giving_up_records_failure_and_a_dead_letter(envelope):
    services.record_delivery_failure(event=Event(envelope), error="DeliveryFailed: smtp down")

    notification = Notification.objects.get()
    assert (notification.status, notification.error) == ("FAILED", "DeliveryFailed: smtp down")
    dead_letter = OutboxEvent.objects.get(topic="dlq")
    assert dead_letter.headers["dlq_reason"] == "notification_gave_up"
    assert dead_letter.payload == envelope
    # A failure recorded is final for that event and channel: no later send.
    assert services.send_event_notifications(event=Event(envelope)) == []


def test_the_recipient_and_the_items_come_from_the_order_row_not_from_the_event(envelope, email_to_memory):
    claimed = {**envelope, "order": {**envelope["order"], "email": "attacker@example.net", "items": [], "total_amount": "0.01"}}

    services.send_event_notifications(event=Event(claimed))

    (message,) = mail.outbox
    assert message.to == ["note@example.com"]
    assert "Total: 8.00" in message.body and "2 x Widget" in message.body
    assert Notification.objects.get().recipient == "note@example.com"


def test_an_event_about_an_unknown_order_sends_and_records_nothing(envelope, email_to_memory):
    unknown = {**envelope, "order": {**envelope["order"], "id": "1b4e28ba-2fa1-11d2-883f-0016d3cca427"}}

    with pytest.raises(InvalidEvent) as refusal:
        services.send_event_notifications(event=Event(unknown))

    assert refusal.value.reason == "unknown_order"
    assert not mail.outbox and not Notification.objects.exists()


def test_an_event_the_order_never_announced_sends_and_records_nothing(envelope, email_to_memory):
    forged = {**envelope, "event_id": "6f1c4c52-8d7e-4b53-9d55-0d6f1b1c2a11"}
    timeline = Order.objects.get(pk=envelope["order"]["id"]).timeline.count()

    with pytest.raises(InvalidEvent) as refusal:
        services.send_event_notifications(event=Event(forged))

    assert refusal.value.reason == "unannounced_event"
    assert not mail.outbox and not Notification.objects.exists()
    assert Order.objects.get(pk=envelope["order"]["id"]).timeline.count() == timeline


def test_the_batch_task_dead_letters_a_refused_event_and_tells_the_others(envelope, email_to_memory):
    forged = {**envelope, "event_id": "6f1c4c52-8d7e-4b53-9d55-0d6f1b1c2a11"}

    send_notifications_batch.apply(args=([forged, envelope],))

    assert [message.to for message in mail.outbox] == [["note@example.com"]]
    assert Notification.objects.get().source_event_id == uuid.UUID(envelope["event_id"])
    dead_letter = OutboxEvent.objects.get(event_type="DEAD_LETTER")
    assert (dead_letter.headers["dlq_reason"], dead_letter.payload) == ("unannounced_event", forged)
