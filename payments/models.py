import uuid

from django.db import models
from django.db.models import F, Q
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
    # Of an approved charge: what refunds not failed have taken (requested or done), and what
    # refunds have given back. Changed with each refund, in its transaction, under the checks below.
    refund_reserved = models.DecimalField(max_digits=16, decimal_places=2, default=0)
    refunded_amount = models.DecimalField(max_digits=16, decimal_places=2, default=0)

    class Meta:
        ordering = ["created_at", "attempt"]
        constraints = [
            # Never more refunded, nor asked back, than the charge captured.
            models.CheckConstraint(
                condition=Q(refund_reserved__gte=0, refund_reserved__lte=F("amount")), name="payment_refund_reserved_in_charge"
            ),
            models.CheckConstraint(
                condition=Q(refunded_amount__gte=0, refunded_amount__lte=F("refund_reserved")),
                name="payment_refunded_within_reserved",
            ),
            models.UniqueConstraint(fields=["order", "attempt"], name="payment_order_attempt_uniq"),
            models.UniqueConstraint(
                fields=["order"], condition=Q(status="APPROVED"), name="payment_one_approved_per_order"
            ),
        ]

    def __str__(self) -> str:
        return f"Payment {self.order_id} #{self.attempt} ({self.status})"


class RefundStatus(models.TextChoices):
    # Recorded with its idempotency key before the gateway is called; the pipeline calls it.
    REQUESTED = "REQUESTED"
    SUCCEEDED = "SUCCEEDED"
    # Declined by the gateway, or given up after the last retry: an operator may retry it.
    FAILED = "FAILED"


class Refund(models.Model):
    """Money given back from an order's approved charge: a client's refund, or a cancellation's.
    Each gateway call for it carries ``idempotency_key`` (committed before the call), so it is
    refunded at most once per attempt; a declined refund retried by an operator is a new attempt."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    order = models.ForeignKey("orders.Order", related_name="refunds", on_delete=models.PROTECT)
    payment = models.ForeignKey(Payment, related_name="refunds", on_delete=models.PROTECT)
    amount = models.DecimalField(max_digits=16, decimal_places=2)
    reason = models.CharField(max_length=255, blank=True)
    status = models.CharField(max_length=16, choices=RefundStatus.choices, default=RefundStatus.REQUESTED)
    attempt = models.PositiveIntegerField(default=1)
    idempotency_key = models.CharField(max_length=100, unique=True)
    gateway_reference = models.CharField(max_length=64, blank=True)
    failure_reason = models.CharField(max_length=2000, blank=True)
    gateway_calls = models.PositiveIntegerField(default=0)
    # Who asked: "client <id>", "operator <name>", or "cancellation".
    requested_by = models.CharField(max_length=150)
    # A client's Idempotency-Key ("client-<id>:<key>") and a fingerprint of its request.
    request_key = models.CharField(max_length=255, null=True, blank=True, unique=True)
    request_fingerprint = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="refund_amount_positive")]
        indexes = [
            # The reconciler's look for refunds whose event was lost.
            models.Index(fields=["updated_at"], condition=Q(status="REQUESTED"), name="refund_requested_idx")
        ]
        # The operators' refunds (README, "Admin actions"): one asked for on the order's page, a failed one retried.
        permissions = [
            ("refund_order", "Can refund an order (all or part of what it was charged)"),
            ("retry_refund", "Can retry a failed refund"),
        ]

    def __str__(self) -> str:
        return f"Refund {self.amount} of {self.order_id} ({self.status})"


class Cancellation(models.Model):
    """An order's cancellation, once per order: who asked, from which status, and what they were
    answered (``answered_status``), which a repeated request with its Idempotency-Key gets again."""

    order = models.OneToOneField("orders.Order", related_name="cancellation", on_delete=models.PROTECT)
    reason = models.CharField(max_length=255, blank=True)
    requested_by = models.CharField(max_length=150)
    from_status = models.CharField(max_length=32)
    answered_status = models.CharField(max_length=32)
    # The refund of what was captured, if the order was paid when cancelled.
    refund = models.OneToOneField(Refund, null=True, blank=True, related_name="+", on_delete=models.PROTECT)
    request_key = models.CharField(max_length=255, null=True, blank=True, unique=True)
    request_fingerprint = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Cancellation of {self.order_id} (from {self.from_status})"


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


# --- Money the provider moved that the database does not know ------------------------------------


class UnreconciledMoney(models.Model):
    """No table: the admin's page of what the provider moved that the database does not know
    (``payments.selectors.unreconciled_money``, read through the gateway), and the permissions of
    what an operator does about a charge there."""

    class Meta:
        managed = False
        default_permissions = ("view",)
        verbose_name = verbose_name_plural = "unreconciled money"
        # The operators' answers to a charge the database lost (README, "Admin actions").
        permissions = [
            ("adopt_unmatched_charge", "Can adopt a charge the database lost into its order (which becomes paid)"),
            ("refund_unmatched_charge", "Can refund a charge the database lost"),
        ]


class UnmatchedChargeRefund(models.Model):
    """A refund of a charge the provider made and no payment holds (after a restore, say), for an
    order the database may not know. Recorded before the gateway is called under a key derived from
    the charge, so a second request or a retry after a timeout is the same refund at the provider."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    charge_reference = models.CharField(max_length=64, unique=True)
    # As the provider gave it: the database may know no such order.
    order_id = models.CharField(max_length=64, blank=True)
    amount = models.DecimalField(max_digits=16, decimal_places=2)
    idempotency_key = models.CharField(max_length=100, unique=True)
    status = models.CharField(max_length=16, choices=RefundStatus.choices, default=RefundStatus.REQUESTED)
    gateway_reference = models.CharField(max_length=64, blank=True)
    failure_reason = models.CharField(max_length=2000, blank=True)
    gateway_calls = models.PositiveIntegerField(default=0)
    requested_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="unmatched_charge_refund_amount_positive")]

    def __str__(self) -> str:
        return f"Refund {self.amount} of unmatched charge {self.charge_reference} ({self.status})"
