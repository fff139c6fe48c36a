"""Prometheus metrics of every process.

web serves ``/metrics`` (its gunicorn workers pool their counters through prometheus_client's
multiprocess directory, set up in gunicorn.conf.py); relay, bridge and worker each serve their
own registry on ``metrics.*_port``. State that lives in the database (orders by status, the
outbox backlog) is read when web is scraped, so it is right whichever process changed it.
"""

from __future__ import annotations

import os

import structlog
from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily

logger = structlog.get_logger(__name__)

HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests answered", ["method", "view", "status"])
HTTP_DURATION = Histogram(
    "http_request_duration_seconds", "Time to answer an HTTP request", ["method", "view"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
OUTBOX_PUBLISHED = Counter("outbox_events_published_total", "Outbox events confirmed by Kafka", ["topic"])
OUTBOX_PUBLISH_FAILURES = Counter("outbox_publish_failures_total", "Outbox events Kafka did not confirm (retried)")
BRIDGE_MESSAGES = Counter("bridge_messages_total", "Messages the bridge consumed, by outcome", ["topic", "outcome"])
BRIDGE_DISPATCH_FAILURES = Counter("bridge_dispatch_failures_total", "Attempts to hand tasks to the Celery broker that failed")
BRIDGE_LAG = Gauge("bridge_consumer_lag", "Messages behind the end of each partition", ["topic", "partition"])
TASKS = Counter("pipeline_tasks_total", "Pipeline task runs by outcome", ["task", "outcome"])
PAYMENTS = Counter("payments_total", "Payment gateway calls by outcome", ["outcome"])
NOTIFICATIONS = Counter("notifications_total", "Notifications by channel and outcome", ["channel", "outcome"])


class DatabaseStateCollector:
    """Orders by status and the outbox backlog, read from the database at scrape time."""

    def collect(self):
        from events.models import OutboxEvent
        from orders.models import Order, OrderStatus

        orders = GaugeMetricFamily("orders", "Orders by status", labels=["status"])
        counts = dict(Order.objects.values_list("status").annotate(n=Count("id")).order_by())
        for status in OrderStatus.values:
            orders.add_metric([status], counts.get(status, 0))
        yield orders
        backlog = OutboxEvent.objects.filter(published_at__isnull=True).aggregate(
            pending=Count("id"), oldest=Min("created_at")
        )
        yield GaugeMetricFamily("outbox_backlog", "Outbox events not yet published", value=backlog["pending"])
        age = (timezone.now() - backlog["oldest"]).total_seconds() if backlog["oldest"] else 0.0
        yield GaugeMetricFamily("outbox_oldest_unpublished_age_seconds", "Age of the oldest unpublished outbox event", value=age)


def web_metrics() -> tuple[bytes, str]:
    """The body and content type of web's ``/metrics``."""
    # prometheus_client's own variable, set by gunicorn.conf.py: the workers' counters are pooled.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        process_registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(process_registry)
    else:
        process_registry = REGISTRY
    database_registry = CollectorRegistry()
    database_registry.register(DatabaseStateCollector())
    return generate_latest(process_registry) + generate_latest(database_registry), CONTENT_TYPE_LATEST


def serve_process_metrics(*, port: int, process: str) -> None:
    """Expose this process's registry on ``port`` (0: not at all), on ``metrics.host``."""
    from django.conf import settings

    if port:
        host = settings.METRICS["host"]
        start_http_server(port, addr=host)
        logger.info("metrics_serving", host=host, port=port, process=process)
