"""Payments' counters."""

from prometheus_client import Counter

PAYMENTS = Counter("payments_total", "Payment gateway calls by outcome", ["outcome"])
# Every outcome from the start, at 0, so that rate() sees the first of each.
for _outcome in ("approved", "declined", "timeout", "unavailable"):
    PAYMENTS.labels(_outcome)
