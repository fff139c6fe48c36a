"""Webhooks' metrics."""

from prometheus_client import Counter, Histogram

DELIVERIES = Counter("webhook_deliveries_total", "Webhook delivery attempts by what they came to", ["outcome"])
for _outcome in ("succeeded", "retrying", "failed", "gone", "endpoint_disabled"):
    DELIVERIES.labels(_outcome)
ATTEMPT_SECONDS = Histogram(
    "webhook_attempt_seconds", "Time of one webhook POST", buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15)
)
ENDPOINTS_DISABLED = Counter("webhook_endpoints_disabled_total", "Webhook endpoints disabled, by why", ["reason"])
for _reason in ("gone", "failing"):
    ENDPOINTS_DISABLED.labels(_reason)
