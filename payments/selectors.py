"""Reads of payments, refunds and cancellations."""

from __future__ import annotations

from decimal import Decimal

from django.db.models import QuerySet

from payments.models import Payment, PaymentStatus, Refund


def order_refunds(*, order_id) -> QuerySet[Refund]:
    return Refund.objects.filter(order_id=order_id).order_by("created_at", "id")


def refundable_amount(*, order_id) -> Decimal:
    """What is left of the order's approved charge to refund (as ``payments.services`` counts it:
    captured, less every refund not failed); 0 if nothing was captured."""
    payment = Payment.objects.filter(order_id=order_id, status=PaymentStatus.APPROVED).first()
    return payment.amount - payment.refund_reserved if payment else Decimal("0")
