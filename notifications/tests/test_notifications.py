"""Notifications: one message per event and channel, recorded and announced once."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from django.core import mail

from devtools.broker import free_port
from devtools.harness.sample_orders import create_test_order
from events.contract import Event, InvalidEvent
from events.models import InboxEntry, OutboxEvent
from notifications import services
from notifications.models import Notification
from orders import services as order_services
from orders.models import Order
from payments import services as payment_services
from payments.models import Payment
from payments.simulator import SimulatedGateway
from messaging.routes import notifies
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


# --- cancelled and refunded ------------------------------------------------------------------------

NO_FAULTS = {"timeout_rate": 0.0, "refund_timeout_rate": 0.0, "refund_failure_rate": 0.0, "seed": "note"}


def paid(envelope) -> Order:
    """The envelope's order, processed and paid."""
    order_id, event_id = envelope["order"]["id"], envelope["event_id"]
    order_services.start_processing(order_id=order_id, event_id=event_id, source="test")
    payment_services.charge_order(order_id=order_id, event_id=event_id, source="test", gateway=SimulatedGateway(success_rate=1.0, **NO_FAULTS))
    return Order.objects.get(pk=order_id)


def refunded(order: Order, amount: str) -> Event:
    """A refund of ``amount`` of the paid ``order``, made; its ORDER_REFUNDED event."""
    refund = payment_services.request_refund(order_id=order.id, requested_by="client 1", amount=Decimal(amount), source="test").refund
    requested = OutboxEvent.objects.filter(key=str(order.id), event_type="REFUND_REQUESTED").last()
    payment_services.refund_payment(
        order_id=order.id, event_id=requested.event_id, refund_id=refund.id, source="test", gateway=SimulatedGateway(success_rate=1.0, **NO_FAULTS)
    )
    return Event(OutboxEvent.objects.filter(key=str(order.id), event_type="ORDER_REFUNDED").last().payload)


def test_the_customer_is_told_of_a_cancellation_once_per_channel(envelope, email_to_memory, settings):
    settings.NOTIFICATION = {**settings.NOTIFICATION, "sms_enabled": True}
    payment_services.cancel_order(order_id=envelope["order"]["id"], requested_by="client 1", source="test")
    cancelled = Event(OutboxEvent.objects.get(event_type="ORDER_CANCELLED").payload)

    assert services.send_event_notifications(event=cancelled) == ["email", "sms"]
    assert services.send_event_notifications(event=cancelled) == []

    (message,) = mail.outbox
    assert message.subject.startswith("Your order is cancelled")
    assert "Status: CANCELLED" in message.body
    sms = Notification.objects.get(source_event_id=cancelled.event_id, channel="sms")
    assert sms.body.startswith("Your order is cancelled")


def test_each_refund_is_told_once_per_channel_with_its_amount_from_the_outbox(envelope, email_to_memory, settings):
    settings.NOTIFICATION = {**settings.NOTIFICATION, "sms_enabled": True}
    order = paid(envelope)
    first, second = refunded(order, "3.00"), refunded(order, "5.00")
    # A copy claiming another amount is told as the outbox recorded the event.
    inflated = Event({**first.payload, "details": {"refund": {**first.refund, "amount": "8.00"}}})

    assert services.send_event_notifications(event=inflated) == ["email", "sms"]
    assert services.send_event_notifications(event=first) == []
    assert services.send_event_notifications(event=second) == ["email", "sms"]

    subjects = [message.subject for message in mail.outbox]
    assert subjects == [f"We refunded you 3.00 USD ({order.id})", f"We refunded you 5.00 USD ({order.id})"]
    assert "Refunded: 3.00 USD" in mail.outbox[0].body and "Status: PARTIALLY_REFUNDED" in mail.outbox[0].body
    assert "Status: REFUNDED" in mail.outbox[1].body
    texts = Notification.objects.filter(channel="sms", source_event_type="ORDER_REFUNDED").order_by("id").values_list("body", flat=True)
    assert [text.split(" (")[0] for text in texts] == ["We refunded you 3.00 USD", "We refunded you 5.00 USD"]


def test_a_failed_refund_tells_the_customer_nothing(envelope, email_to_memory):
    order = paid(envelope)
    payment_services.request_refund(order_id=order.id, requested_by="client 1", source="test")
    Payment.objects.update(gateway_reference="sim_unknown")  # the gateway refuses: no such charge
    requested = OutboxEvent.objects.get(event_type="REFUND_REQUESTED")
    payment_services.refund_payment(
        order_id=order.id,
        event_id=requested.event_id,
        refund_id=Event(requested.payload).refund["id"],
        source="test",
        gateway=SimulatedGateway(success_rate=1.0, **NO_FAULTS),
    )
    failed = Event(OutboxEvent.objects.get(event_type="REFUND_FAILED").payload)

    # No handler of notifications must apply it (the reconciler settles it as it is), and the
    # bridge hands it to none.
    assert services.handlers_for(event_type=failed.type) == []
    assert not notifies(failed)
