"""The provider's view against the database's: charges and refunds the provider made that the
database does not know (``payments.selectors.unreconciled_money``), counted for the metric
``payments_unreconciled`` and its alert; ``python manage.py reconcile_payments`` lists them."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import structlog

from payments import selectors as payment_selectors
from payments.gateway import PaymentGateway, ProviderRecords
from recovery.metrics import UNRECONCILED_MONEY

logger = structlog.get_logger(__name__)


def check_provider_records(*, gateway: PaymentGateway, since: dt.datetime) -> Counter[str] | None:
    """Count what the provider moved since ``since`` that the database does not know, per kind,
    into the metric; None (and no metric) for a gateway that cannot list its records."""
    if not isinstance(gateway, ProviderRecords):
        return None
    found = payment_selectors.unreconciled_money(records=gateway.money_moved(since=since))
    counts = Counter(item.kind for item in found)
    for kind in payment_selectors.UNRECONCILED_KINDS:
        UNRECONCILED_MONEY.labels(kind).set(counts[kind])
    if found:
        logger.warning(
            "provider_records_unreconciled",
            counts=dict(counts),
            examples=[item.as_line() for item in found[:5]],
            what_to_do="python manage.py reconcile_payments lists them all",
        )
    return counts
