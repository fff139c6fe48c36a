"""The peer's work after a commit, each step a Celery task of its own, as usual: the order's chain
(process, charge), a refund, and for each event of an order its notifications and its webhook calls."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import requests
from celery import chain, shared_task
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from standardwebhooks import Webhook

from events.contract import (
    NOTIFICATION_SENT,
    ORDER_CANCELLED,
    ORDER_PAID,
    ORDER_PROCESSING,
    ORDER_REFUNDED,
    PAYMENT_FAILED,
    REFUND_FAILED,
    REFUND_REQUESTED,
)
from notifications.models import Notification, NotificationStatus
from notifications.services import SENDERS, SUBJECTS, Announcement, compose, enabled_channels
from orders.models import Order, OrderStatus, OrderTimelineEntry
from orders.services import record_order_event
from payments.gateway import GatewayUnavailable, get_gateway
from payments.models import Payment, PaymentStatus, Refund, RefundStatus
from webhooks.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from webhooks.services import WEBHOOK_TYPES

CANCELLATION_REFUND_REASON = "order cancelled"


def fulfil(order_id) -> None:
    chain(process_order.si(str(order_id)), charge_payment.si(str(order_id))).delay()


def record_event(order: Order, *, event_type: str, message: str, to_status: str | None = None,
                 refunded: Decimal | None = None) -> None:
    """A step of a locked ``order``'s life (a status change when ``to_status``) on its timeline;
    once committed, the customer is told and the webhook endpoints are called."""
    previous_status = order.status
    if to_status:
        order.status = to_status
        order.save(update_fields=["status", "updated_at"])
    entry = OrderTimelineEntry.objects.create(
        order=order, status=order.status, previous_status=previous_status if to_status else "", event_type=event_type,
        event_id=uuid.uuid4(), message=message,
    )
    transaction.on_commit(lambda: announce(entry_id=entry.pk, event_type=event_type, refunded=refunded))


def mark_cancelling(order: Order, *, message: str) -> None:
    """PAID -> CANCELLING, no one told: the refund's events follow, then ORDER_CANCELLED."""
    previous_status, order.status = order.status, OrderStatus.CANCELLING
    order.save(update_fields=["status", "updated_at"])
    OrderTimelineEntry.objects.create(order=order, status=order.status, previous_status=previous_status,
                                      event_type="CANCELLATION_REQUESTED", message=message)


def announce(*, entry_id: int, event_type: str, refunded: Decimal | None) -> None:
    if event_type in SUBJECTS:
        notify_customer.delay(entry_id, refunded=str(refunded) if refunded is not None else None)
    if event_type in WEBHOOK_TYPES:
        for endpoint_id in WebhookEndpoint.objects.filter(enabled=True).values_list("id", flat=True):
            send_webhook.delay(entry_id, str(endpoint_id))


def start_refund(order: Order, *, payment: Payment, amount: Decimal, reason: str, requested_by: str) -> Refund:
    """A refund of ``amount`` reserved on its charge and recorded with its gateway key, given back
    by a task once committed."""
    Payment.objects.filter(pk=payment.pk).update(refund_reserved=F("refund_reserved") + amount)
    attempt = Refund.objects.filter(payment=payment).count() + 1
    refund = Refund.objects.create(order=order, payment=payment, amount=amount, reason=reason, requested_by=requested_by,
                                   idempotency_key=f"{payment.idempotency_key}:refund:{attempt}")
    record_event(order, event_type=REFUND_REQUESTED, message=f"Refund of {amount} requested")
    transaction.on_commit(lambda: refund_payment.delay(str(refund.pk)))
    return refund


@shared_task(name="peer.process_order")
def process_order(order_id: str) -> None:
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_id)
        if order.status == OrderStatus.CREATED:  # not cancelled meanwhile
            record_event(order, to_status=OrderStatus.PROCESSING, event_type=ORDER_PROCESSING,
                         message="Order accepted for processing")


# The gateway answers the same key with the same charge, so a retry after a timeout is safe.
@shared_task(name="peer.charge_payment", autoretry_for=(GatewayUnavailable,), retry_backoff=True)
def charge_payment(order_id: str) -> None:
    order = Order.objects.get(pk=order_id)
    if order.status != OrderStatus.PROCESSING:  # cancelled before its charge
        return
    key, currency = f"{order.id}:1", settings.PAYMENTS["currency"]
    result = get_gateway().charge(idempotency_key=key, order_id=str(order.id), amount=order.total_amount, currency=currency)
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_id)
        payment = Payment.objects.create(
            order=order, attempt=1, idempotency_key=key, amount=order.total_amount, currency=currency, gateway_calls=1,
            status=PaymentStatus.APPROVED if result.approved else PaymentStatus.DECLINED,
            gateway_reference=result.reference, decline_reason=result.decline_reason, completed_at=timezone.now(),
        )
        if order.status == OrderStatus.CANCELLED:
            # Cancelled while the gateway answered: what it took goes back.
            if result.approved:
                start_refund(order, payment=payment, amount=payment.amount, reason=CANCELLATION_REFUND_REASON,
                             requested_by="cancellation")
        elif result.approved:
            record_event(order, to_status=OrderStatus.PAID, event_type=ORDER_PAID, message=f"Payment approved ({result.reference})")
        else:
            record_event(order, to_status=OrderStatus.PAYMENT_FAILED, event_type=PAYMENT_FAILED,
                         message=f"Payment declined: {result.decline_reason}")


@shared_task(name="peer.refund_payment", autoretry_for=(GatewayUnavailable,), retry_backoff=True)
def refund_payment(refund_id: str) -> None:
    refund = Refund.objects.select_related("payment").get(pk=refund_id)
    if refund.status != RefundStatus.REQUESTED:
        return
    result = get_gateway().refund(idempotency_key=refund.idempotency_key, charge_reference=refund.payment.gateway_reference,
                                  amount=refund.amount)
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=refund.order_id)
        updated = Refund.objects.filter(pk=refund.pk, status=RefundStatus.REQUESTED).update(
            status=RefundStatus.SUCCEEDED if result.approved else RefundStatus.FAILED, gateway_reference=result.reference,
            failure_reason=result.decline_reason, gateway_calls=F("gateway_calls") + 1, completed_at=timezone.now(),
        )
        if not updated:  # a retry of a refund already recorded
            return
        if not result.approved:
            Payment.objects.filter(pk=refund.payment_id).update(refund_reserved=F("refund_reserved") - refund.amount)
            record_event(order, event_type=REFUND_FAILED, message=f"Refund of {refund.amount} failed: {result.decline_reason}")
            return
        Payment.objects.filter(pk=refund.payment_id).update(refunded_amount=F("refunded_amount") + refund.amount)
        payment = Payment.objects.get(pk=refund.payment_id)
        message = f"Refunded {refund.amount} ({result.reference})"
        if order.status in (OrderStatus.PAID, OrderStatus.PARTIALLY_REFUNDED):
            kept = payment.amount - payment.refunded_amount
            record_event(order, to_status=OrderStatus.PARTIALLY_REFUNDED if kept > 0 else OrderStatus.REFUNDED,
                         event_type=ORDER_REFUNDED, message=message, refunded=refund.amount)
            return
        record_event(order, event_type=ORDER_REFUNDED, message=message, refunded=refund.amount)
        nothing_kept = payment.refunded_amount >= payment.amount
        if order.status == OrderStatus.CANCELLING and nothing_kept:
            record_event(order, to_status=OrderStatus.CANCELLED, event_type=ORDER_CANCELLED, message="Cancelled: nothing is kept")


@shared_task(name="peer.notify_customer")
def notify_customer(entry_id: int, refunded: str | None = None) -> None:
    """The product's message about one step, on each enabled channel."""
    entry = OrderTimelineEntry.objects.get(pk=entry_id)
    order = Order.objects.prefetch_related("items").get(pk=entry.order_id)
    told = Announcement(order=order, status=entry.status, event_type=entry.event_type, event_id=str(entry.event_id),
                        correlation_id=order.correlation_id, refunded=refunded)
    for channel in enabled_channels():
        message = compose(announcement=told, channel=channel)
        SENDERS[channel](message)
        with transaction.atomic():
            Notification.objects.create(
                order=order, source_event_id=entry.event_id, source_event_type=entry.event_type, channel=channel,
                recipient=message.recipient, subject=message.subject, body=message.body, status=NotificationStatus.SENT,
            )
            record_order_event(order_id=order.id, status=entry.status, event_type=NOTIFICATION_SENT, event_id=None,
                               message=f"{channel} sent to {message.recipient} for {entry.event_type}")


@shared_task(name="peer.send_webhook", autoretry_for=(requests.RequestException,), retry_backoff=True, max_retries=5)
def send_webhook(entry_id: int, endpoint_id: str) -> None:
    """POST one event to one endpoint, signed as Standard Webhooks says; a log row of the delivery."""
    entry = OrderTimelineEntry.objects.select_related("order").get(pk=entry_id)
    endpoint = WebhookEndpoint.objects.get(pk=endpoint_id)
    now = timezone.now()
    body = json.dumps({
        "type": WEBHOOK_TYPES[entry.event_type],
        "timestamp": now.isoformat(),
        "data": {"order_id": str(entry.order_id), "status": entry.status, "total_amount": str(entry.order.total_amount),
                 "event_id": str(entry.event_id), "sequence": entry.pk},
    })
    msg_id = str(entry.event_id)
    headers = {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(endpoint.secret).sign(msg_id=msg_id, timestamp=now, data=body),
    }
    response = requests.post(endpoint.url, data=body.encode(), headers=headers, timeout=settings.WEBHOOKS["timeout"])
    response.raise_for_status()
    WebhookDelivery.objects.create(
        endpoint=endpoint, event_id=entry.event_id, event_type=entry.event_type, order_id=entry.order_id, body=body,
        status=DeliveryStatus.SUCCEEDED, attempts=send_webhook.request.retries + 1, last_status_code=response.status_code,
        completed_at=timezone.now(),
    )
