"""Reads of payments, refunds and cancellations."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.db.models import QuerySet

from orders import selectors as order_selectors
from payments.gateway import CHARGE, REFUND, MoneyMoved
from payments.models import Payment, PaymentStatus, Refund, RefundStatus, UnmatchedChargeRefund

# What the provider moved and the database does not know (the kinds of ``unreconciled_money``).
CHARGE_WITHOUT_PAYMENT = "charge_without_payment"
REFUND_UNKNOWN = "refund_unknown"
UNRECONCILED_KINDS = (CHARGE_WITHOUT_PAYMENT, REFUND_UNKNOWN)
# Idempotency keys (or references) looked up per query.
KEYS_PER_QUERY = 1000


def order_refunds(*, order_id) -> QuerySet[Refund]:
    return Refund.objects.filter(order_id=order_id).order_by("created_at", "id")


def refundable_amount(*, order_id) -> Decimal:
    """What is left of the order's approved charge to refund (as ``payments.services`` counts it:
    captured, less every refund not failed); 0 if nothing was captured."""
    payment = Payment.objects.filter(order_id=order_id, status=PaymentStatus.APPROVED).first()
    return payment.amount - payment.refund_reserved if payment else Decimal("0")


@dataclass(frozen=True)
class Unreconciled:
    kind: str
    record: MoneyMoved

    def as_line(self) -> dict[str, str]:
        """One JSON object per line of ``reconcile_payments``."""
        line = {
            "kind": self.kind,
            "reference": self.record.reference,
            "order_id": self.record.order_id,
            "amount": str(self.record.amount),
            "idempotency_key": self.record.idempotency_key,
        }
        if self.record.charge_reference:
            line["charge_reference"] = self.record.charge_reference
        return line


def unreconciled_money(*, records: list[MoneyMoved]) -> list[Unreconciled]:
    """The provider's approved charges whose idempotency key no payment holds, and its approved
    refunds whose key no refund holds, but for the charges a refund of an unmatched charge settled
    (and their refunds): money the provider moved that the database does not know (what a restore
    to a backup taken before them loses, say). Our own keys are committed before every call, so in
    normal running there are none."""
    charges = [r for r in records if r.kind == CHARGE]
    refunds = [r for r in records if r.kind == REFUND]
    charge_keys = _known(Payment.objects.all(), "idempotency_key", [r.idempotency_key for r in charges])
    # A charge whose rest we refunded is settled, with the refunds of it the provider made before.
    settled_charges = _known(
        UnmatchedChargeRefund.objects.filter(status=RefundStatus.SUCCEEDED),
        "charge_reference",
        [r.reference for r in charges] + [r.charge_reference for r in refunds],
    )
    refund_keys = [r.idempotency_key for r in refunds]
    known_refund_keys = _known(Refund.objects.all(), "idempotency_key", refund_keys) | _known(
        UnmatchedChargeRefund.objects.all(), "idempotency_key", refund_keys
    )
    return [
        *(
            Unreconciled(kind=CHARGE_WITHOUT_PAYMENT, record=r)
            for r in charges
            if r.idempotency_key not in charge_keys and r.reference not in settled_charges
        ),
        *(
            Unreconciled(kind=REFUND_UNKNOWN, record=r)
            for r in refunds
            if r.idempotency_key not in known_refund_keys and r.charge_reference not in settled_charges
        ),
    ]


def unmatched_charge(*, found: list[Unreconciled], reference: str) -> Unreconciled | None:
    """The charge ``reference`` among ``found`` (``unreconciled_money``), if it is one no payment holds."""
    return next((item for item in found if item.kind == CHARGE_WITHOUT_PAYMENT and item.record.reference == reference), None)


def refunded_unknown(*, found: list[Unreconciled], charge: MoneyMoved) -> Decimal:
    """What the provider's refunds of ``charge`` among ``found`` (those the database does not know)
    gave back of it."""
    refunds = [item.record for item in found if item.kind == REFUND_UNKNOWN]
    return sum((refund.amount for refund in refunds if refund.charge_reference == charge.reference), Decimal("0"))


@dataclass(frozen=True)
class UnreconciledLine:
    """What the provider moved, with what the database knows about it (the admin's page)."""

    item: Unreconciled
    # The status of the order it was for; None if the database knows no such order.
    order_status: str | None
    # Of an unmatched charge: the refund asked for of it, if any (unanswered, or declined).
    refund: UnmatchedChargeRefund | None


def unreconciled_lines(*, found: list[Unreconciled]) -> list[UnreconciledLine]:
    statuses = order_selectors.order_statuses(order_ids=[item.record.order_id for item in found])
    charges = [item.record.reference for item in found if item.kind == CHARGE_WITHOUT_PAYMENT]
    refunds = {refund.charge_reference: refund for refund in UnmatchedChargeRefund.objects.filter(charge_reference__in=charges)}
    return [
        UnreconciledLine(
            item=item,
            order_status=statuses.get(item.record.order_id),
            refund=refunds.get(item.record.reference) if item.kind == CHARGE_WITHOUT_PAYMENT else None,
        )
        for item in found
    ]


def _known(queryset: QuerySet, field: str, values: list[str]) -> set[str]:
    """Which of ``values`` the rows of ``queryset`` hold in ``field``."""
    found: set[str] = set()
    for start in range(0, len(values), KEYS_PER_QUERY):
        chunk = values[start : start + KEYS_PER_QUERY]
        found.update(queryset.filter(**{f"{field}__in": chunk}).values_list(field, flat=True))
    return found
