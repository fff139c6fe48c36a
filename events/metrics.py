"""The outbox backlog, read from the database when web is scraped (whichever process wrote it), and
the dlq messages archived for operators (counted by the worker that archives them)."""

from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily

from events.models import OutboxEvent

DEAD_LETTERS = Counter("dead_letters_archived_total", "dlq messages archived for operators, by reason", ["reason"])


class OutboxBacklogCollector:
    def collect(self):
        backlog = OutboxEvent.objects.filter(published_at__isnull=True).aggregate(
            pending=Count("id"), oldest=Min("created_at")
        )
        yield GaugeMetricFamily("outbox_backlog", "Outbox events not yet published", value=backlog["pending"])
        age = (timezone.now() - backlog["oldest"]).total_seconds() if backlog["oldest"] else 0.0
        yield GaugeMetricFamily("outbox_oldest_unpublished_age_seconds", "Age of the oldest unpublished outbox event", value=age)
