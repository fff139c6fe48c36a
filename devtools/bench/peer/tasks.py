"""The peer's Celery chain: process, charge, notify; each step a task of its own, as usual."""

from __future__ import annotations

import uuid

from celery import chain, shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from events.contract import NOTIFICATION_SENT, ORDER_PAID, ORDER_PROCESSING, PAYMENT_FAILED
from notifications.models import Notification, NotificationStatus
from notifications.services import SENDERS, SUBJECTS, Announcement, compose, enabled_channels
from orders.models import Order, OrderStatus, OrderTimelineEntry
from orders.services import record_order_event
from payments.gateway import GatewayUnavailable, get_gateway
from payments.models import Payment, PaymentStatus


def fulfil(order_id) -> None:
    chain(process_order.si(str(order_id)), charge_payment.si(str(order_id)), send_notifications.si(str(order_id))).delay()


def _change_status(order: Order, *, to_status: str, event_type: str, message: str) -> None:
    previous_status, order.status = order.status, to_status
    order.save(update_fields=["status", "updated_at"])
    OrderTimelineEntry.objects.create(
        order=order, status=to_status, previous_status=previous_status, event_type=event_type, event_id=uuid.uuid4(),
        message=message,
    )


@shared_task(name="peer.process_order")
def process_order(order_id: str) -> None:
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_id)
        _change_status(order, to_status=OrderStatus.PROCESSING, event_type=ORDER_PROCESSING,
                       message="Order accepted for processing")


# The gateway answers the same key with the same charge, so a retry after a timeout is safe.
@shared_task(name="peer.charge_payment", autoretry_for=(GatewayUnavailable,), retry_backoff=True)
def charge_payment(order_id: str) -> None:
    order = Order.objects.get(pk=order_id)
    key, currency = f"{order.id}:1", settings.PAYMENTS["currency"]
    result = get_gateway().charge(idempotency_key=key, order_id=str(order.id), amount=order.total_amount, currency=currency)
    with transaction.atomic():
        Payment.objects.create(
            order=order, attempt=1, idempotency_key=key, amount=order.total_amount, currency=currency, gateway_calls=1,
            status=PaymentStatus.APPROVED if result.approved else PaymentStatus.DECLINED,
            gateway_reference=result.reference, decline_reason=result.decline_reason, completed_at=timezone.now(),
        )
        order = Order.objects.select_for_update().get(pk=order_id)
        if result.approved:
            _change_status(order, to_status=OrderStatus.PAID, event_type=ORDER_PAID,
                           message=f"Payment approved ({result.reference})")
        else:
            _change_status(order, to_status=OrderStatus.PAYMENT_FAILED, event_type=PAYMENT_FAILED,
                           message=f"Payment declined: {result.decline_reason}")


@shared_task(name="peer.send_notifications")
def send_notifications(order_id: str) -> None:
    """The product's message for each step the customer is told about, on each enabled channel."""
    order = Order.objects.prefetch_related("items").get(pk=order_id)
    for step in order.timeline.filter(event_type__in=SUBJECTS):
        told = Announcement(order=order, status=step.status, event_type=step.event_type, event_id=str(step.event_id),
                            correlation_id=order.correlation_id)
        for channel in enabled_channels():
            message = compose(announcement=told, channel=channel)
            SENDERS[channel](message)
            with transaction.atomic():
                Notification.objects.create(
                    order=order, source_event_id=step.event_id, source_event_type=step.event_type, channel=channel,
                    recipient=message.recipient, subject=message.subject, body=message.body,
                    status=NotificationStatus.SENT,
                )
                record_order_event(order_id=order.id, status=step.status, event_type=NOTIFICATION_SENT, event_id=None,
                                   message=f"{channel} sent to {message.recipient} for {step.event_type}")
