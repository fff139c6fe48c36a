"""Payments' counters."""

from prometheus_client import Counter

PAYMENTS = Counter("payments_total", "Payment gateway calls by outcome", ["outcome"])
