"""Reads of payments, refunds and cancellations."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.db.models import QuerySet

from payments.gateway import CHARGE, REFUND, MoneyMoved
from payments.models import Payment, PaymentStatus, Refund

# What the provider moved and the database does not know (the kinds of ``unreconciled_money``).
CHARGE_WITHOUT_PAYMENT = "charge_without_payment"
REFUND_UNKNOWN = "refund_unknown"
UNRECONCILED_KINDS = (CHARGE_WITHOUT_PAYMENT, REFUND_UNKNOWN)
# Idempotency keys looked up per query.
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
    refunds whose key no refund holds: money the provider moved that the database does not know
    (what a restore to a backup taken before them loses, say). Our own keys are committed before
    every call, so in normal running there are none."""
    known = {
        CHARGE: _known_keys(Payment, [r.idempotency_key for r in records if r.kind == CHARGE]),
        REFUND: _known_keys(Refund, [r.idempotency_key for r in records if r.kind == REFUND]),
    }
    kinds = {CHARGE: CHARGE_WITHOUT_PAYMENT, REFUND: REFUND_UNKNOWN}
    return [Unreconciled(kind=kinds[r.kind], record=r) for r in records if r.idempotency_key not in known[r.kind]]


def _known_keys(model, keys: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(keys), KEYS_PER_QUERY):
        chunk = keys[start : start + KEYS_PER_QUERY]
        found.update(model.objects.filter(idempotency_key__in=chunk).values_list("idempotency_key", flat=True))
    return found
