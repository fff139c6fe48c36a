"""Retention: history nobody needs any more is deleted once older than the retention period."""

from __future__ import annotations

import datetime as dt
from collections import Counter

from django.conf import settings
from django.db.models import Exists, OuterRef

from events.models import InboxEntry, OutboxEvent
from recovery.metrics import ROWS_PURGED
from webhooks.models import DeliveryStatus, WebhookDelivery


def purge_history(*, retention: dt.timedelta, batch_size: int, max_batches: int, now: dt.datetime) -> Counter:
    """Delete published outbox rows of complete events, and inbox entries of events no incomplete
    outbox row still has, once older than ``retention``: ``batch_size`` rows per statement, so
    no lock is held for long; and webhook deliveries (with their attempts) once older than their
    own retention (``webhooks.retention_days_succeeded`` and ``_failed``). Timeline, payments and
    notifications are kept."""
    cutoff = now - retention
    still_needed = OutboxEvent.objects.filter(event_id=OuterRef("event_id"), completed_at__isnull=True)
    webhooks = settings.WEBHOOKS
    delivered_before = now - dt.timedelta(days=webhooks["retention_days_succeeded"])
    failed_before = now - dt.timedelta(days=webhooks["retention_days_failed"])
    tables = {
        "outbox": OutboxEvent.objects.filter(completed_at__lt=cutoff, published_at__isnull=False).order_by("completed_at"),
        "inbox": InboxEntry.objects.filter(handled_at__lt=cutoff).filter(~Exists(still_needed)).order_by("handled_at"),
        "webhook_deliveries": WebhookDelivery.objects.filter(
            status=DeliveryStatus.SUCCEEDED, completed_at__lt=delivered_before
        ).order_by("completed_at"),
        "webhook_failed_deliveries": WebhookDelivery.objects.filter(
            status=DeliveryStatus.FAILED, completed_at__lt=failed_before
        ).order_by("completed_at"),
    }
    purged = Counter()
    for table, old_rows in tables.items():
        for _ in range(max_batches):
            ids = list(old_rows.values_list("id", flat=True)[:batch_size])
            if not ids:
                break
            _total, per_model = old_rows.model.objects.filter(pk__in=ids).delete()  # attempts go with their delivery
            purged[table] += per_model.get(old_rows.model._meta.label, 0)
            if len(ids) < batch_size:
                break
    for table, count in purged.items():
        ROWS_PURGED.labels(table).inc(count)
    return purged
