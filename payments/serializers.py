"""Request validation and response shapes for cancelling and refunding an order."""

from __future__ import annotations

from rest_framework import serializers

from orders.serializers import MoneyField, StrictCharField
from payments.models import Cancellation, Refund

REASON_MAX_LENGTH = 255


class CancelRequestSerializer(serializers.Serializer):
    reason = StrictCharField(max_length=REASON_MAX_LENGTH, required=False, allow_blank=True, default="")


class RefundRequestSerializer(serializers.Serializer):
    amount = MoneyField(required=False, help_text="Amount to refund; all that remains of the charge if left out.")
    reason = StrictCharField(max_length=REASON_MAX_LENGTH, required=False, allow_blank=True, default="")


class RefundSerializer(serializers.ModelSerializer):
    order_id = serializers.UUIDField()
    failure_reason = serializers.SerializerMethodField(help_text='"Refund failed" for a failed refund, else empty.')

    class Meta:
        model = Refund
        fields = [
            "id",
            "order_id",
            "amount",
            "reason",
            "status",
            "gateway_reference",
            "failure_reason",
            "created_at",
            "completed_at",
        ]

    def get_failure_reason(self, refund: Refund) -> str:
        # The gateway's own words (the admin shows them) are not for the customer's eyes.
        return "Refund failed" if refund.failure_reason else ""


class CancellationSerializer(serializers.ModelSerializer):
    order_id = serializers.UUIDField()
    status = serializers.CharField(source="answered_status", help_text="The order's status when it was cancelled.")
    message = serializers.SerializerMethodField()
    refund = RefundSerializer(allow_null=True, read_only=True)

    class Meta:
        model = Cancellation
        fields = ["order_id", "status", "message", "reason", "refund", "created_at"]

    def get_message(self, cancellation: Cancellation) -> str:
        if cancellation.answered_status == "CANCELLED":
            return "Order cancelled"
        if cancellation.refund is not None:
            return "Cancellation accepted: the charge is being refunded"
        return "Cancellation accepted: the order ends cancelled whatever its charge under way comes to"
