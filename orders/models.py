import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class OrderStatus(models.TextChoices):
    CREATED = "CREATED"
    PROCESSING = "PROCESSING"
    PAID = "PAID"
    PAYMENT_FAILED = "PAYMENT_FAILED"
    # Parked: a step kept failing after its last retry; the event is in the dlq topic.
    FAILED = "FAILED"
    # Cancellation asked for while money is still moving: a charge under way, or the refund of
    # what was captured; CANCELLED once nothing is kept.
    CANCELLING = "CANCELLING"
    # Cancelled: never charged, or every captured cent refunded.
    CANCELLED = "CANCELLED"
    # Paid, and part of the charge refunded.
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    # Paid, and all of the charge refunded.
    REFUNDED = "REFUNDED"


class Order(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user_id = models.CharField(max_length=64)
    # The API client that created the order (token authentication); it alone sees it, with staff.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, related_name="orders", on_delete=models.SET_NULL
    )
    email = models.EmailField(max_length=254)
    status = models.CharField(max_length=32, choices=OrderStatus.choices, default=OrderStatus.CREATED)
    total_amount = models.DecimalField(max_digits=16, decimal_places=2)
    correlation_id = models.CharField(max_length=128, blank=True)
    # A client's Idempotency-Key and a fingerprint of the body it came with: a retry with the
    # same key and body gets this order back; the same key with another body is refused.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True, unique=True)
    request_fingerprint = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    # Events recorded for the order, counted under its lock: its next event's place in its history,
    # which names the event and so makes its id (orders.services.next_event_name).
    events_recorded = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["-created_at"], name="order_created_idx"),
            models.Index(fields=["user_id", "-created_at"], name="order_user_created_idx"),
            models.Index(fields=["status", "-created_at"], name="order_status_created_idx"),
        ]
        # The operators' actions on orders (README, "Admin actions"); viewing needs only view_order.
        permissions = [
            ("cancel_order", "Can cancel an order (a paid one is refunded)"),
            ("retry_payment", "Can retry a failed payment (a new charge)"),
        ]

    def __str__(self) -> str:
        return f"Order {self.id} ({self.status})"


class OrderItem(models.Model):
    order = models.ForeignKey(Order, related_name="items", on_delete=models.CASCADE)
    product_id = models.CharField(max_length=64)
    product_name = models.CharField(max_length=200)
    quantity = models.PositiveIntegerField()
    price = models.DecimalField(max_digits=12, decimal_places=2)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.quantity} x {self.product_name}"

    @property
    def line_total(self):
        return self.price * self.quantity


class OrderTimelineEntry(models.Model):
    """One step in an order's life: a status change or an event about the order, oldest first."""

    order = models.ForeignKey(Order, related_name="timeline", on_delete=models.CASCADE)
    status = models.CharField(max_length=32, choices=OrderStatus.choices)
    # The status this entry changed from; blank for the first entry and for events that change none.
    previous_status = models.CharField(max_length=32, choices=OrderStatus.choices, blank=True, default="")
    event_type = models.CharField(max_length=64)
    event_id = models.UUIDField(null=True, blank=True)
    message = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]
        verbose_name_plural = "order timeline entries"

    def __str__(self) -> str:
        return f"{self.event_type} -> {self.status}"
