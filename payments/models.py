import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone


class PaymentStatus(models.TextChoices):
    PENDING = "PENDING"
    APPROVED = "APPROVED"
    DECLINED = "DECLINED"


class Payment(models.Model):
    """One attempt to charge an order. The gateway sees ``idempotency_key``, so retrying an
    attempt (after a timeout, a crash) never charges twice; at most one attempt per order
    is ever approved."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    order = models.ForeignKey("orders.Order", related_name="payments", on_delete=models.PROTECT)
    attempt = models.PositiveIntegerField(default=1)
    idempotency_key = models.CharField(max_length=100, unique=True)
    amount = models.DecimalField(max_digits=16, decimal_places=2)
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16, choices=PaymentStatus.choices, default=PaymentStatus.PENDING)
    gateway_reference = models.CharField(max_length=64, blank=True)
    decline_reason = models.CharField(max_length=255, blank=True)
    # Calls made to the gateway for this attempt (more than one: timeouts were retried).
    gateway_calls = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "attempt"]
        constraints = [
            models.UniqueConstraint(fields=["order", "attempt"], name="payment_order_attempt_uniq"),
            models.UniqueConstraint(
                fields=["order"], condition=Q(status="APPROVED"), name="payment_one_approved_per_order"
            ),
        ]

    def __str__(self) -> str:
        return f"Payment {self.order_id} #{self.attempt} ({self.status})"


class SimulatedCharge(models.Model):
    """The simulated gateway's own ledger: what a real provider would hold on its side.

    One row per idempotency key, so the number of rows approved per order is the number of
    times the customer was really charged.
    """

    idempotency_key = models.CharField(max_length=100, unique=True)
    amount = models.DecimalField(max_digits=16, decimal_places=2)
    currency = models.CharField(max_length=3)
    approved = models.BooleanField()
    reference = models.CharField(max_length=64)
    decline_reason = models.CharField(max_length=255, blank=True)
    calls = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.reference} {'approved' if self.approved else 'declined'}"
