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


# --- The simulated provider's ledger (payments/simulator.py) -------------------------------------
# Not the service's data: what a real provider holds on its side, kept here only because the
# simulator needs somewhere to keep it. Nothing but payments/simulator.py writes or reads it in the
# product (the harness's audit and the tests read it as a provider's statement).


class SimulatedCharge(models.Model):
    """The simulated gateway's charges: one row per idempotency key, so the number of rows approved
    per order is the number of times the customer was really charged."""

    idempotency_key = models.CharField(max_length=100, unique=True)
    # The order the charge was for, as a provider keeps it in the charge's metadata.
    order_id = models.CharField(max_length=64, blank=True)
    amount = models.DecimalField(max_digits=16, decimal_places=2)
    currency = models.CharField(max_length=3)
    approved = models.BooleanField()
    # What a refund names (charge_reference).
    reference = models.CharField(max_length=64, db_index=True)
    decline_reason = models.CharField(max_length=255, blank=True)
    calls = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.reference} {'approved' if self.approved else 'declined'}"


class SimulatedRefund(models.Model):
    """The simulated gateway's refunds: one row per idempotency key; the approved ones of a charge
    never add up to more than it captured."""

    idempotency_key = models.CharField(max_length=100, unique=True)
    charge_reference = models.CharField(max_length=64, db_index=True)
    amount = models.DecimalField(max_digits=16, decimal_places=2)
    approved = models.BooleanField()
    reference = models.CharField(max_length=64)
    decline_reason = models.CharField(max_length=255, blank=True)
    calls = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.reference} {'approved' if self.approved else 'declined'}"
