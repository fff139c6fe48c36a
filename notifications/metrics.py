"""Notifications' counters."""

from prometheus_client import Counter

NOTIFICATIONS = Counter("notifications_total", "Notifications by channel and outcome", ["channel", "outcome"])
