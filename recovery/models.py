from django.db import models
from django.utils import timezone

from orders.models import Order


class RedriveReason(models.TextChoices):
    STUCK_CREATED = "stuck_created"
    STUCK_PROCESSING = "stuck_processing"
    STUCK_CANCELLING = "stuck_cancelling"
    # A published event of a terminal order that a handler it is routed to never applied.
    EVENT_NOT_HANDLED = "event_not_handled"
    OPERATOR = "operator"


class Redrive(models.Model):
    """One time an order's awaited event was sent again from the database, through the outbox,
    under its own event id. The count per order bounds the reconciler's attempts."""

    order = models.ForeignKey(Order, related_name="redrives", on_delete=models.PROTECT)
    event_id = models.UUIDField()
    event_type = models.CharField(max_length=64)
    reason = models.CharField(max_length=32, choices=RedriveReason.choices)
    requested_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["order", "-created_at"], name="redrive_order_created_idx")]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id} ({self.reason})"


class UnfinishedOrder(Order):
    """Orders not yet in a terminal status, for the admin page operators re-drive them from."""

    class Meta:
        proxy = True
        verbose_name = "unfinished order"
        permissions = [("redrive_order", "Can re-drive an order (send the event it awaits again)")]
