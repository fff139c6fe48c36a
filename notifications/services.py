"""Writes to notifications: one message per order event and enabled channel, recorded once."""

from __future__ import annotations

import smtplib
from dataclasses import dataclass
from typing import Callable

import structlog
from django.conf import settings
from django.db import transaction

from common.errors import TransientError
from events.contract import NOTIFICATION_SENT, Event, InvalidEvent
from events import selectors as event_selectors
from events.services import claim_event, count_redelivery, enqueue_dead_letter, enqueue_event
from notifications.backends import OutgoingMessage, send_email, send_sms
from notifications.metrics import NOTIFICATIONS
from notifications.models import Channel, Notification, NotificationStatus
from orders import selectors as order_selectors
from orders import services as order_services
from orders.models import Order

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


@dataclass(frozen=True)
class Announcement:
    """What the customer is told, all of it read from the database: the order, and the status the
    event announced (from the timeline entry written with the event)."""

    order: Order
    status: str
    event_type: str
    event_id: str
    correlation_id: str


@dataclass(frozen=True)
class Briefing:
    """What telling the customers about a batch of events needs from the database, read in a few
    queries for the whole batch: the orders with their items, the statuses their events announced,
    and the channels already done (the inbox, checked again when each message is recorded)."""

    orders: dict[str, Order]
    announced: dict[tuple[str, str, str], str]
    done: set[tuple[str, str]]


def brief(*, events: list[Event]) -> Briefing:
    order_ids = {event.order_id for event in events}
    event_ids = {event.event_id for event in events}
    return Briefing(
        orders=order_selectors.orders_with_items(order_ids=order_ids),
        announced=order_selectors.announced_statuses(order_ids=order_ids, event_ids=event_ids),
        done=event_selectors.applied(handlers=[_handler(channel) for channel in Channel.values], event_ids=event_ids),
    )


def announcement(*, event: Event, briefing: Briefing) -> Announcement:
    """The event's announcement, as the database has it; ``InvalidEvent`` if its order does not
    exist or never announced this event."""
    order_id, event_id, event_type = event.order_id, event.event_id, event.type
    order = briefing.orders.get(order_id)
    if order is None:
        raise InvalidEvent("unknown_order", f"no order {order_id}")
    status = briefing.announced.get((order_id, event_id, event_type))
    if status is None:
        raise InvalidEvent("unannounced_event", f"order {order_id} never announced {event_type} {event_id}")
    return Announcement(
        order=order, status=status, event_type=event_type, event_id=event_id, correlation_id=order.correlation_id
    )


def compose(*, announcement: Announcement, channel: str) -> OutgoingMessage:
    order = announcement.order
    subject = f"{SUBJECTS[announcement.event_type]} ({order.id})"
    items = ", ".join(f"{item.quantity} x {item.product_name}" for item in order.items.all())
    body = f"Order {order.id}\nStatus: {announcement.status}\nTotal: {order.total_amount}\nItems: {items}\n"
    return OutgoingMessage(
        recipient=order.email if channel == Channel.EMAIL else order.user_id,
        subject=subject,
        body=body if channel == Channel.EMAIL else subject,
        message_key=f"{announcement.event_id}.{channel}",
    )


def _record(*, announcement: Announcement, channel: str, message: OutgoingMessage, status: str, error: str = "") -> None:
    order = announcement.order
    notification = Notification.objects.create(
        order=order,
        source_event_id=announcement.event_id,
        source_event_type=announcement.event_type,
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
            order=order_selectors.order_snapshot(order=order),
            correlation_id=announcement.correlation_id,
            source=EVENT_SOURCE,
            details={
                "notification_id": notification.pk,
                "channel": channel,
                "recipient": message.recipient,
                "source_event_id": announcement.event_id,
                "source_event_type": announcement.event_type,
            },
        )
        order_services.record_order_event(
            order_id=order.id,
            status=announcement.status,
            event_type=NOTIFICATION_SENT,
            event_id=event.event_id,
            message=f"{channel} sent to {message.recipient} for {announcement.event_type}",
        )


def send_event_notifications(*, event: Event, briefing: Briefing | None = None) -> list[str]:
    """Send the event's message on every enabled channel not yet done; returns the channels sent now.
    ``briefing``: what the database said about the event's batch (``brief``); read here if None.

    Recipient, items and amounts come from the order row, never from the event; an event whose
    order does not exist or never announced it sends nothing (``InvalidEvent``).

    Per channel, the inbox entry, the record and the NOTIFICATION_SENT event are written first and
    committed right after the message went out, in one transaction: a copy of the event handled
    at the same moment waits for it and then finds the channel done, and a failed send records
    nothing. Only a process that dies between the send and the commit leaves the message sent
    and unrecorded; the retry sends it again with the same message key (the Message-ID of an
    email), which receivers can drop.
    """
    briefing = briefing or brief(events=[event])
    pending = []
    for channel in enabled_channels():
        if (_handler(channel), event.event_id) in briefing.done:
            count_redelivery(handler=_handler(channel), event_id=event.event_id)
        else:
            pending.append(channel)
    if not pending:
        return []
    told = announcement(event=event, briefing=briefing)
    sent = []
    for channel in pending:
        message = compose(announcement=told, channel=channel)
        with transaction.atomic():
            if not claim_event(handler=_handler(channel), event_id=told.event_id):
                continue
            _record(announcement=told, channel=channel, message=message, status=NotificationStatus.SENT)
            try:
                SENDERS[channel](message)
            except (OSError, smtplib.SMTPException) as exc:
                NOTIFICATIONS.labels(channel, "error").inc()
                raise DeliveryFailed(f"{channel} to {message.recipient}: {exc}") from exc
        NOTIFICATIONS.labels(channel, "sent").inc()
        logger.info("notification_sent", channel=channel, recipient=message.recipient, event_type=told.event_type)
        sent.append(channel)
    return sent


def record_delivery_failure(*, event: Event, error: str) -> None:
    """After the last retry: each channel not yet sent is recorded FAILED and the event goes to dlq."""
    told = announcement(event=event, briefing=brief(events=[event]))
    with transaction.atomic():
        for channel in enabled_channels():
            if claim_event(handler=_handler(channel), event_id=told.event_id):
                message = compose(announcement=told, channel=channel)
                _record(announcement=told, channel=channel, message=message, status=NotificationStatus.FAILED, error=error)
                NOTIFICATIONS.labels(channel, "failed").inc()
        enqueue_dead_letter(
            original=event.payload,
            key=str(told.order.id),
            reason="notification_gave_up",
            error=error,
            source=EVENT_SOURCE,
            correlation_id=told.correlation_id,
        )
    logger.error("notification_failed", event_type=told.event_type, error=error)
