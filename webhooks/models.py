import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class WebhookEndpoint(models.Model):
    """Where a client wants its orders' events: a receiver URL, the event types it takes (empty:
    every order event), and the secret deliveries are signed with (Standard Webhooks)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # The API client whose orders' events it receives; none in the local default without tokens
    # (it then receives the events of orders made without one).
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, related_name="webhook_endpoints", on_delete=models.CASCADE
    )
    url = models.CharField(max_length=2000)
    event_types = models.JSONField(default=list, blank=True)
    description = models.CharField(max_length=255, blank=True)
    enabled = models.BooleanField(default=True)
    # Why it was disabled (by its client, a 410 Gone, or failing for too long).
    disabled_reason = models.CharField(max_length=255, blank=True)
    secret = models.CharField(max_length=100)
    # The secret before the last rotation: deliveries carry both signatures until it expires.
    previous_secret = models.CharField(max_length=100, blank=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    # Since when every attempt has failed (none when the last one succeeded).
    failing_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["owner"], condition=Q(enabled=True), name="webhook_endpoint_enabled_idx")]

    def __str__(self) -> str:
        return f"{self.url} ({'enabled' if self.enabled else 'disabled'})"


class DeliveryStatus(models.TextChoices):
    # Due at ``next_attempt_at``: a task sends it then.
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    # Every attempt of the schedule failed, the receiver answered 410, or its endpoint was disabled.
    FAILED = "FAILED"


class WebhookDelivery(models.Model):
    """One order event for one endpoint, written in the event's transaction: at most one per pair.
    Every attempt sends the same body under the same ``webhook-id`` (the event's id)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    endpoint = models.ForeignKey(WebhookEndpoint, related_name="deliveries", on_delete=models.CASCADE)
    event_id = models.UUIDField()
    event_type = models.CharField(max_length=64)
    order_id = models.UUIDField(db_index=True)
    body = models.TextField()
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # When a task was last handed this delivery; the reconciler hands it again if that task was lost.
    dispatched_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "webhook deliveries"
        permissions = [("redeliver_webhookdelivery", "Can redeliver a webhook delivery (one more attempt, now)")]
        constraints = [models.UniqueConstraint(fields=["endpoint", "event_id"], name="webhook_delivery_event_uniq")]
        indexes = [
            # The reconciler's look for deliveries due.
            models.Index(fields=["next_attempt_at"], condition=Q(status="PENDING"), name="webhook_delivery_due_idx"),
            models.Index(fields=["endpoint", "-created_at"], name="webhook_delivery_endpoint_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id} -> {self.endpoint_id} ({self.status})"


class WebhookAttempt(models.Model):
    """One POST of a delivery: when, how long, what the receiver answered (or why no answer)."""

    delivery = models.ForeignKey(WebhookDelivery, related_name="attempt_log", on_delete=models.CASCADE)
    started_at = models.DateTimeField()
    duration_ms = models.FloatField()
    status_code = models.PositiveIntegerField(null=True, blank=True)
    # The first bytes of the answer, as text.
    response_excerpt = models.TextField(blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["started_at", "id"]

    def __str__(self) -> str:
        return f"{self.started_at:%Y-%m-%d %H:%M:%S} {self.status_code or self.error[:40]}"
