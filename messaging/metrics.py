"""The relay's and the bridge's counters."""

from prometheus_client import Counter, Gauge

OUTBOX_PUBLISHED = Counter("outbox_events_published_total", "Outbox events confirmed by Kafka", ["topic"])
OUTBOX_PUBLISH_FAILURES = Counter("outbox_publish_failures_total", "Outbox events Kafka did not confirm (retried)")
BRIDGE_MESSAGES = Counter("bridge_messages_total", "Messages the bridge consumed, by outcome", ["topic", "outcome"])
BRIDGE_DISPATCH_FAILURES = Counter("bridge_dispatch_failures_total", "Attempts to hand tasks to the Celery broker that failed")
BRIDGE_LAG = Gauge("bridge_consumer_lag", "Messages behind the end of each partition", ["topic", "partition"])
