"""Request validation and response shapes for the orders API."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from events.contract import (
    NOTIFICATION_SENT,
    ORDER_CANCELLED,
    ORDER_CREATED,
    ORDER_PAID,
    ORDER_PROCESSING,
    ORDER_REFUNDED,
    PAYMENT_FAILED,
    REFUND_FAILED,
    REFUND_REQUESTED,
)
from orders.models import Order, OrderItem, OrderStatus, OrderTimelineEntry
from orders.services import CREATED_MESSAGE

CENT = Decimal("0.01")
# How the API writes an amount: a string with two decimals ("75.97").
AMOUNT = serializers.DecimalField(max_digits=16, decimal_places=2)


class StrictCharField(serializers.CharField):
    """A string, and only a string: ``123`` or ``true`` is a wrong type, not text."""

    default_error_messages = {"not_a_string": "Not a valid string."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("not_a_string")
        return super().to_internal_value(data)


class StrictEmailField(StrictCharField, serializers.EmailField):
    pass


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer: ``"2"``, ``2.0`` and ``true`` are refused."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


@extend_schema_field(
    {
        "oneOf": [
            {"type": "number", "minimum": 0.01},
            {"type": "string", "pattern": r"^\d{1,10}(\.\d{1,2})?$"},
        ],
        "description": "A positive amount with at most two decimals, as a JSON number or a string.",
    }
)
class MoneyField(serializers.DecimalField):
    """A positive amount with at most two decimals, as a JSON number or a numeric string."""

    def __init__(self, **kwargs):
        super().__init__(max_digits=12, decimal_places=2, min_value=CENT, **kwargs)

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, Decimal, str)):
            self.fail("invalid")
        # Normalised to cents so "30", 30 and 30.00 are the same request.
        return super().to_internal_value(data).quantize(CENT)


class OrderItemInputSerializer(serializers.Serializer):
    product_id = StrictCharField(min_length=1, max_length=64)
    product_name = StrictCharField(min_length=1, max_length=200)
    quantity = StrictIntegerField(min_value=1, max_value=settings.ORDER_LIMITS["max_quantity"])
    price = MoneyField(max_value=Decimal(settings.ORDER_LIMITS["max_price"]))


class OrderCreateSerializer(serializers.Serializer):
    user_id = StrictCharField(min_length=1, max_length=64)
    email = StrictEmailField(max_length=254)
    items = OrderItemInputSerializer(
        many=True, allow_empty=False, min_length=1, max_length=settings.ORDER_LIMITS["max_items"]
    )


class ErrorSerializer(serializers.Serializer):
    """Every error the API answers: a reason, and per field what is wrong for invalid input."""

    error = serializers.CharField()
    fields = serializers.DictField(required=False, help_text="Per field, what is wrong (400 only).")


class OrderCreatedSerializer(serializers.Serializer):
    """The seed's response to ``POST /orders``."""

    message = serializers.CharField()
    order_id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=OrderStatus.choices)


class OrderItemSerializer(serializers.ModelSerializer):
    line_total = serializers.DecimalField(max_digits=16, decimal_places=2, read_only=True)

    class Meta:
        model = OrderItem
        fields = ["product_id", "product_name", "quantity", "price", "line_total"]


class OrderSerializer(serializers.ModelSerializer):
    items = OrderItemSerializer(many=True, read_only=True)

    class Meta:
        model = Order
        fields = ["id", "user_id", "email", "status", "total_amount", "items", "created_at", "updated_at"]


class OrderListRowSerializer(serializers.ModelSerializer):
    """An order in a list: how many items it has, not which (up to 100 each would make a page
    of megabytes); GET /orders/{id} has them."""

    item_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Order
        fields = ["id", "user_id", "email", "status", "total_amount", "item_count", "created_at", "updated_at"]


class PaymentAttemptSerializer(serializers.Serializer):
    attempt = serializers.IntegerField()
    status = serializers.CharField()
    amount = serializers.DecimalField(max_digits=16, decimal_places=2)
    currency = serializers.CharField()
    decline_reason = serializers.SerializerMethodField(help_text='"Card declined" for a declined attempt, else empty.')
    created_at = serializers.DateTimeField()
    completed_at = serializers.DateTimeField(allow_null=True)

    def get_decline_reason(self, payment) -> str:
        # The gateway's own words (the admin shows them) are not for the customer's eyes.
        return "Card declined" if payment.decline_reason else ""


class NotificationSentSerializer(serializers.Serializer):
    channel = serializers.CharField()
    event_type = serializers.CharField(source="source_event_type")
    status = serializers.CharField()
    recipient = serializers.CharField()
    created_at = serializers.DateTimeField()


class OrderRefundSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    amount = serializers.DecimalField(max_digits=16, decimal_places=2)
    reason = serializers.CharField()
    status = serializers.CharField()
    gateway_reference = serializers.CharField()
    created_at = serializers.DateTimeField()
    completed_at = serializers.DateTimeField(allow_null=True)


class OrderDetailSerializer(OrderSerializer):
    """One order with what a client asks next: its payment attempts, refunds and the notifications sent."""

    payments = PaymentAttemptSerializer(many=True, read_only=True)
    refunds = OrderRefundSerializer(many=True, read_only=True)
    refunded_amount = serializers.SerializerMethodField(help_text="What refunds have given back so far.")
    notifications = NotificationSentSerializer(many=True, read_only=True)

    class Meta(OrderSerializer.Meta):
        fields = [*OrderSerializer.Meta.fields, "payments", "refunds", "refunded_amount", "notifications"]

    @extend_schema_field(AMOUNT)
    def get_refunded_amount(self, order) -> Decimal:
        # The payments are prefetched; a refund is only ever of the approved one.
        total = sum((payment.refunded_amount for payment in order.payments.all()), Decimal("0.00"))
        # A string like every amount the API returns (a method field's Decimal would go out as a float).
        return AMOUNT.to_representation(total)


class OrderStatusSerializer(serializers.ModelSerializer):
    order_id = serializers.UUIDField(source="id")

    class Meta:
        model = Order
        fields = ["order_id", "status", "updated_at"]


# What a client reads of a timeline entry: a fixed text per kind of entry. The stored message,
# which the admin shows, may hold an exception's text, an operator's name or a note.
PUBLIC_MESSAGES = {
    ORDER_CREATED: CREATED_MESSAGE,
    ORDER_PROCESSING: "Order accepted for processing",
    ORDER_PAID: "Payment approved",
    PAYMENT_FAILED: "Payment declined",
    OrderStatus.CANCELLED: "Order cancelled",
    ORDER_CANCELLED: "Order cancelled",
    "CANCELLATION_REQUESTED": "Cancellation requested",
    "PAYMENT_AFTER_CANCELLATION": "Charge under way resolved",
    REFUND_REQUESTED: "Refund requested",
    ORDER_REFUNDED: "Refunded",
    REFUND_FAILED: "Refund failed",
    "RESUMED": "Order resumed",
    "REDRIVEN": "Processing retried",
}
# Why a step gave up and parked the order (the reason that starts the stored message).
ON_HOLD_CAUSES = {
    "processing_gave_up": "order processing failed",
    "payment_gave_up": "payment gateway unavailable",
    "redrive_limit": "order processing stalled",
}
STATUS_EVENTS = frozenset({ORDER_CREATED, ORDER_PROCESSING, ORDER_PAID, PAYMENT_FAILED})


def public_message(entry: OrderTimelineEntry) -> str:
    if entry.event_type == NOTIFICATION_SENT:
        # Written from the channel, the order's own recipient and the event's type alone.
        return entry.message
    if entry.status == OrderStatus.FAILED and entry.previous_status:
        reason = entry.message.partition(":")[0]
        return f"On hold: {ON_HOLD_CAUSES.get(reason, 'order processing failed')}"
    if entry.event_type == ORDER_PROCESSING and entry.previous_status == OrderStatus.PAYMENT_FAILED:
        return "Payment retry requested"
    if entry.event_type in STATUS_EVENTS and not entry.previous_status and entry.message != CREATED_MESSAGE:
        return "Processing retried"  # an event sent again (re-published from dlq), not a change
    return PUBLIC_MESSAGES.get(entry.event_type) or entry.event_type.replace("_", " ").capitalize()


class OrderTimelineEntrySerializer(serializers.ModelSerializer):
    message = serializers.SerializerMethodField(help_text="What happened, in words fit for the customer's eyes.")

    class Meta:
        model = OrderTimelineEntry
        fields = ["event_type", "status", "event_id", "message", "created_at"]

    def get_message(self, entry: OrderTimelineEntry) -> str:
        return public_message(entry)


class QueryFilterSerializer(serializers.Serializer):
    """A list's filters, from its query string."""

    def validate(self, attrs):
        # Query strings give "" for "?status=": DRF would drop it silently; it is a bad filter.
        blank = [name for name in self.fields if self.initial_data.get(name) == ""]
        if blank:
            raise serializers.ValidationError({name: ["This filter may not be blank."] for name in blank})
        return attrs


class OrderListFilterSerializer(QueryFilterSerializer):
    status = serializers.ChoiceField(choices=OrderStatus.choices, required=False)
    user_id = serializers.CharField(min_length=1, max_length=64, required=False)
