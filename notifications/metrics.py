"""Notifications' counters."""

from prometheus_client import Counter

NOTIFICATIONS = Counter("notifications_total", "Notifications by channel and outcome", ["channel", "outcome"])
TAKEOVERS = Counter(
    "notification_claims_taken_over_total", "Notification claims taken over from a sender that held one too long", ["channel"]
)
