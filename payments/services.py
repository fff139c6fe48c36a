"""Writes to payments: charging an order through the gateway, at most once."""

from __future__ import annotations

import structlog
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from events.contract import InvalidEvent
from events.services import claim_event, was_handled
from orders import selectors as order_selectors
from orders import services as order_services
from orders.models import Order
from payments.gateway import GatewayTimeout, GatewayUnavailable, PaymentGateway, get_gateway
from payments.metrics import PAYMENTS
from payments.models import Payment, PaymentStatus

logger = structlog.get_logger(__name__)

CHARGE_HANDLER = "payments.charge_order"


def _open_attempt(*, order_id) -> Payment | None:
    """The order's pending payment attempt, created if needed, with this gateway call counted;
    None if the order is not awaiting payment."""
    try:
        status, total_amount = order_selectors.get_order_status_and_total(order_id=order_id)
    except Order.DoesNotExist:
        raise InvalidEvent("unknown_order", f"no order {order_id}") from None
    if status not in order_services.RECORD_PAYMENT.sources:
        logger.info("payment_skipped", order_id=str(order_id), status=status)
        return None
    attempts = list(Payment.objects.filter(order_id=order_id).order_by("attempt"))
    pending = next((payment for payment in reversed(attempts) if payment.status == PaymentStatus.PENDING), None)
    if pending:
        Payment.objects.filter(pk=pending.pk).update(gateway_calls=F("gateway_calls") + 1)
        return pending
    attempt = len(attempts) + 1
    try:
        with transaction.atomic():
            return Payment.objects.create(
                order_id=order_id,
                attempt=attempt,
                idempotency_key=f"{order_id}:{attempt}",
                amount=total_amount,
                currency=settings.PAYMENTS["currency"],
                gateway_calls=1,
            )
    except IntegrityError:
        # A concurrent delivery of the same event opened this attempt first.
        return _open_attempt(order_id=order_id)


def charge_order(
    *,
    order_id,
    event_id,
    source: str,
    gateway: PaymentGateway | None = None,
) -> Payment | None:
    """Charge the order's pending attempt and record the outcome: the order goes PAID or PAYMENT_FAILED.

    The attempt (and its idempotency key) is committed before the gateway is called, so a
    retry after a timeout or a crash charges under the same key: the gateway returns the
    first charge instead of making a second. A decline is final. ``gateway``: the configured one
    (``get_gateway()``) unless given.
    """
    if was_handled(handler=CHARGE_HANDLER, event_id=event_id):
        return None
    payment = _open_attempt(order_id=order_id)
    if payment is None:
        return None
    try:
        result = (gateway or get_gateway()).charge(
            idempotency_key=payment.idempotency_key,
            order_id=str(order_id),
            amount=payment.amount,
            currency=payment.currency,
        )
    except GatewayUnavailable as exc:
        PAYMENTS.labels("timeout" if isinstance(exc, GatewayTimeout) else "unavailable").inc()
        raise
    with transaction.atomic():
        if not claim_event(handler=CHARGE_HANDLER, event_id=event_id):
            return None
        outcome = {
            "status": PaymentStatus.APPROVED if result.approved else PaymentStatus.DECLINED,
            "gateway_reference": result.reference,
            "decline_reason": result.decline_reason,
            "completed_at": timezone.now(),
        }
        # Only a pending attempt takes an outcome; a decided one is returned as it is.
        if not Payment.objects.filter(pk=payment.pk, status=PaymentStatus.PENDING).update(**outcome):
            return Payment.objects.get(pk=payment.pk)
        for name, value in outcome.items():
            setattr(payment, name, value)
        order_services.record_payment_outcome(
            order_id=order_id,
            approved=result.approved,
            message=(
                f"Payment approved ({result.reference})"
                if result.approved
                else f"Payment declined: {result.decline_reason}"
            ),
            source=source,
            attempt=payment.attempt,
        )
    PAYMENTS.labels("approved" if result.approved else "declined").inc()
    logger.info(
        "payment_completed",
        order_id=str(order_id),
        status=payment.status,
        attempt=payment.attempt,
        amount=str(payment.amount),
        reference=result.reference,
    )
    return payment
