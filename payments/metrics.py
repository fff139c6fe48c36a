"""Payments' counters."""

from prometheus_client import Counter

from orders.services import CANCELLABLE_STATUSES

PAYMENTS = Counter("payments_total", "Payment gateway calls by outcome", ["outcome"])
# Every outcome from the start, at 0, so that rate() sees the first of each.
for _outcome in ("approved", "declined", "timeout", "unavailable"):
    PAYMENTS.labels(_outcome)

REFUNDS = Counter("refunds_total", "Refund outcomes and gateway errors", ["outcome"])
for _outcome in ("succeeded", "declined", "gave_up", "timeout", "unavailable"):
    REFUNDS.labels(_outcome)
REFUNDED_AMOUNT = Counter("refunded_amount_total", "Money refunded, in the shop's currency")
CANCELLATIONS = Counter("order_cancellations_total", "Orders cancelled, by the status they were cancelled from", ["from_status"])
for _status in sorted(CANCELLABLE_STATUSES):
    CANCELLATIONS.labels(_status)
