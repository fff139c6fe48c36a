"""Writes to notifications: one message per order event and enabled channel, recorded once."""

from __future__ import annotations

import smtplib
from typing import Any, Callable

import structlog
from django.conf import settings
from django.db import transaction

from events.contract import NOTIFICATION_SENT
from events.services import claim_event, enqueue_dead_letter, enqueue_event, was_handled
from notifications.backends import OutgoingMessage, send_email, send_sms
from notifications.models import Channel, Notification, NotificationStatus
from orders import services as order_services
from orders_project.celery import TransientError
from orders_project.metrics import NOTIFICATIONS

logger = structlog.get_logger(__name__)

EVENT_SOURCE = "notification-service"

SUBJECTS = {
    "ORDER_CREATED": "We received your order",
    "ORDER_PROCESSING": "Your order is being processed",
    "ORDER_PAID": "Payment received: your order is confirmed",
    "PAYMENT_FAILED": "Payment failed for your order",
}

SENDERS: dict[str, Callable[[OutgoingMessage], None]] = {Channel.EMAIL: send_email, Channel.SMS: send_sms}


class DeliveryFailed(TransientError):
    """The mail server or SMS provider did not take the message; worth another try."""


def enabled_channels() -> list[str]:
    config = settings.NOTIFICATION
    return [
        channel
        for channel, enabled in ((Channel.EMAIL, config["email_enabled"]), (Channel.SMS, config["sms_enabled"]))
        if enabled
    ]


def _handler(channel: str) -> str:
    return f"notifications.{channel}"


def handlers_for(*, event_type: str) -> list[str]:
    """The inbox handler names that must apply an event of ``event_type``: one per enabled channel
    if the customer is told about it, none otherwise."""
    return [_handler(channel) for channel in enabled_channels()] if event_type in SUBJECTS else []


def compose(*, envelope: dict[str, Any], channel: str) -> OutgoingMessage:
    order = envelope["order"]
    subject = f"{SUBJECTS[envelope['type']]} ({order['id']})"
    items = ", ".join(f"{item['quantity']} x {item['product_name']}" for item in order["items"])
    body = f"Order {order['id']}\nStatus: {order['status']}\nTotal: {order['total_amount']}\nItems: {items}\n"
    return OutgoingMessage(
        recipient=order["email"] if channel == Channel.EMAIL else order["user_id"],
        subject=subject,
        body=body if channel == Channel.EMAIL else subject,
        message_key=f"{envelope['event_id']}.{channel}",
    )


def _record(*, envelope: dict[str, Any], channel: str, message: OutgoingMessage, status: str, error: str = "") -> None:
    order = envelope["order"]
    notification = Notification.objects.create(
        order_id=order["id"],
        source_event_id=envelope["event_id"],
        source_event_type=envelope["type"],
        channel=channel,
        recipient=message.recipient,
        subject=message.subject,
        body=message.body,
        status=status,
        error=error,
    )
    if status == NotificationStatus.SENT:
        event = enqueue_event(
            event_type=NOTIFICATION_SENT,
            order=order,
            correlation_id=envelope["metadata"]["correlation_id"],
            source=EVENT_SOURCE,
            details={
                "notification_id": notification.pk,
                "channel": channel,
                "recipient": message.recipient,
                "source_event_id": envelope["event_id"],
                "source_event_type": envelope["type"],
            },
        )
        order_services.record_order_event(
            order_id=order["id"],
            status=order["status"],
            event_type=NOTIFICATION_SENT,
            event_id=event.event_id,
            message=f"{channel} sent to {message.recipient} for {envelope['type']}",
        )


def send_event_notifications(*, envelope: dict[str, Any]) -> list[str]:
    """Send the event's message on every enabled channel not yet done; returns the channels sent now.

    A channel's record, its NOTIFICATION_SENT event and its inbox entry commit together after
    the message went out. If the process dies between sending and recording, the retry sends
    again with the same message key (the Message-ID of an email), which receivers can drop.
    """
    sent = []
    for channel in enabled_channels():
        handler = _handler(channel)
        if was_handled(handler=handler, event_id=envelope["event_id"]):
            continue
        message = compose(envelope=envelope, channel=channel)
        try:
            SENDERS[channel](message)
        except (OSError, smtplib.SMTPException) as exc:
            NOTIFICATIONS.labels(channel, "error").inc()
            raise DeliveryFailed(f"{channel} to {message.recipient}: {exc}") from exc
        with transaction.atomic():
            if not claim_event(handler=handler, event_id=envelope["event_id"]):
                continue
            _record(envelope=envelope, channel=channel, message=message, status=NotificationStatus.SENT)
        NOTIFICATIONS.labels(channel, "sent").inc()
        logger.info("notification_sent", channel=channel, recipient=message.recipient, event_type=envelope["type"])
        sent.append(channel)
    return sent


def record_delivery_failure(*, envelope: dict[str, Any], error: str) -> None:
    """After the last retry: each channel not yet sent is recorded FAILED and the event goes to dlq."""
    with transaction.atomic():
        for channel in enabled_channels():
            if claim_event(handler=_handler(channel), event_id=envelope["event_id"]):
                message = compose(envelope=envelope, channel=channel)
                _record(envelope=envelope, channel=channel, message=message, status=NotificationStatus.FAILED, error=error)
                NOTIFICATIONS.labels(channel, "failed").inc()
        enqueue_dead_letter(
            original=envelope,
            key=envelope["order"]["id"],
            reason="notification_gave_up",
            error=error,
            source=EVENT_SOURCE,
            correlation_id=envelope["metadata"]["correlation_id"],
        )
    logger.error("notification_failed", event_type=envelope["type"], error=error)
