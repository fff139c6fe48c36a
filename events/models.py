import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone


class OutboxEvent(models.Model):
    """An event written in the same transaction as the state change it announces.

    The relay publishes unpublished rows to Kafka in primary-key order (so per
    order, in the order they were written) and stamps ``published_at`` only after
    the broker confirmed delivery.
    """

    event_id = models.UUIDField(unique=True, default=uuid.uuid4, editable=False)
    event_type = models.CharField(max_length=64)
    topic = models.CharField(max_length=128)
    # Kafka message key: the order id, so all of an order's events share a partition.
    key = models.CharField(max_length=128, db_index=True)
    payload = models.JSONField()
    headers = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)
    published_at = models.DateTimeField(null=True, blank=True)
    publish_attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            # The relay's scan: only the (small) unpublished tail, in write order.
            models.Index(fields=["id"], condition=Q(published_at__isnull=True), name="outbox_unpublished_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id}"


class InboxEntry(models.Model):
    """An event a handler has applied. A redelivered event finds its entry and changes nothing.

    Written in the same transaction as the handler's state change, so "handled" and "applied"
    cannot disagree.
    """

    handler = models.CharField(max_length=64)
    event_id = models.UUIDField()
    handled_at = models.DateTimeField(default=timezone.now)
    # Times the event came again after it was handled (at-least-once delivery at work).
    redeliveries = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["handler", "event_id"], name="inbox_handler_event_uniq")]
        verbose_name_plural = "inbox entries"

    def __str__(self) -> str:
        return f"{self.handler} {self.event_id}"
