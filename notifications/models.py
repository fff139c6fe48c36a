from django.db import models
from django.utils import timezone


class Channel(models.TextChoices):
    EMAIL = "email"
    SMS = "sms"


class NotificationStatus(models.TextChoices):
    SENT = "SENT"
    # Gave up after the last retry; the event is in the dlq topic.
    FAILED = "FAILED"


class Notification(models.Model):
    """What was sent (or could not be) for one order event on one channel: at most one per pair."""

    order = models.ForeignKey("orders.Order", related_name="notifications", on_delete=models.PROTECT)
    source_event_id = models.UUIDField()
    source_event_type = models.CharField(max_length=64)
    channel = models.CharField(max_length=16, choices=Channel.choices)
    recipient = models.CharField(max_length=254)
    subject = models.CharField(max_length=255)
    body = models.TextField()
    status = models.CharField(max_length=16, choices=NotificationStatus.choices)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["source_event_id", "channel"], name="notification_event_channel_uniq")
        ]

    def __str__(self) -> str:
        return f"{self.channel} {self.source_event_type} -> {self.recipient}"
