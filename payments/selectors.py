"""Reads of payments, refunds and cancellations."""

from __future__ import annotations

from django.db.models import QuerySet

from payments.models import Refund


def order_refunds(*, order_id) -> QuerySet[Refund]:
    return Refund.objects.filter(order_id=order_id).order_by("created_at", "id")
