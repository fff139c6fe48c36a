from django.db import models
from django.utils import timezone


class Channel(models.TextChoices):
    EMAIL = "email"
    SMS = "sms"


class NotificationStatus(models.TextChoices):
    # Claimed by ``claimed_by`` at ``claimed_at``, who sends it outside any transaction and then
    # records the outcome; a claim older than ``notification.claim_timeout`` is taken over.
    SENDING = "SENDING"
    # The last send failed (``error``); the next delivery of the event claims it again.
    UNSENT = "UNSENT"
    SENT = "SENT"
    # Gave up after the last retry; the event is in the dlq topic.
    FAILED = "FAILED"


class Notification(models.Model):
    """What is sent (or could not be) for one order event on one channel: at most one per pair.
    The row is the send's claim, written and committed before the message goes out."""

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
    # Who holds (or last held) the claim, and since when.
    claimed_by = models.CharField(max_length=128, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    # Claims taken over from a sender that held one past the claim timeout (presumed dead).
    takeovers = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["source_event_id", "channel"], name="notification_event_channel_uniq")
        ]
        indexes = [
            # The reconciler's look for stale claims: only the (small) set of claims in progress.
            models.Index(
                fields=["claimed_at"], condition=models.Q(status="SENDING"), name="notification_sending_idx"
            )
        ]

    def __str__(self) -> str:
        return f"{self.channel} {self.source_event_type} -> {self.recipient}"
