"""Request validation and response shapes for the webhooks API."""

from __future__ import annotations

import datetime as dt

from rest_framework import serializers

from orders.serializers import QueryFilterSerializer, StrictCharField
from webhooks.models import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from webhooks.services import WEBHOOK_TYPES

EVENT_TYPES = sorted(WEBHOOK_TYPES.values())
EVENT_TYPES_HELP = "The event types it receives; empty: every order event (those added later too)."
URL_HELP = (
    "Where deliveries are POSTed: https, on a public address (a URL naming a loopback, private, shared, "
    "link-local or metadata address is refused with 422, as is http outside the local default)."
)


class StrictBooleanField(serializers.BooleanField):
    """A JSON true or false: ``"true"``, ``1`` and ``"yes"`` are refused."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


def _event_types(**kwargs) -> serializers.ListField:
    return serializers.ListField(
        child=serializers.ChoiceField(choices=EVENT_TYPES), max_length=len(EVENT_TYPES), help_text=EVENT_TYPES_HELP, **kwargs
    )


class EndpointCreateSerializer(serializers.Serializer):
    url = StrictCharField(max_length=2000, help_text=URL_HELP)
    event_types = _event_types(default=list)
    description = StrictCharField(max_length=255, allow_blank=True, default="")


class EndpointUpdateSerializer(serializers.Serializer):
    """What a PATCH may change; what it leaves out stays as it is."""

    url = StrictCharField(max_length=2000, required=False, help_text=URL_HELP)
    event_types = _event_types(required=False)
    description = StrictCharField(max_length=255, allow_blank=True, required=False)
    enabled = StrictBooleanField(
        required=False, help_text="false stops deliveries; true resumes them (and clears why it was disabled)."
    )


class EndpointSerializer(serializers.ModelSerializer):
    """An endpoint as a client reads it: never its secret."""

    event_types = serializers.ListField(child=serializers.ChoiceField(choices=EVENT_TYPES), help_text=EVENT_TYPES_HELP)
    disabled_reason = serializers.CharField(help_text="Why it is disabled: by its client, a 410 Gone, or failing for days.")
    failing_since = serializers.DateTimeField(allow_null=True, help_text="Since when every attempt has failed.")
    previous_secret_expires_at = serializers.DateTimeField(
        allow_null=True, help_text="Until when deliveries are signed with the secret before the last rotation too."
    )

    class Meta:
        model = WebhookEndpoint
        fields = [
            "id",
            "url",
            "event_types",
            "description",
            "enabled",
            "disabled_reason",
            "failing_since",
            "previous_secret_expires_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class EndpointWithSecretSerializer(EndpointSerializer):
    """An endpoint just created, or its secret just rotated: the only answers that show the secret."""

    secret = serializers.CharField(help_text="The signing secret (whsec_...): shown this once.")

    class Meta(EndpointSerializer.Meta):
        fields = read_only_fields = [*EndpointSerializer.Meta.fields, "secret"]


class AttemptSerializer(serializers.ModelSerializer):
    status_code = serializers.IntegerField(allow_null=True, help_text="The receiver's HTTP status; null without an answer.")
    response_excerpt = serializers.CharField(help_text="The first 500 bytes of the answer.")
    error = serializers.CharField(help_text="Why there was no answer (connection error, timeout, refused address).")

    class Meta:
        model = WebhookAttempt
        fields = read_only_fields = ["started_at", "status_code", "duration_ms", "response_excerpt", "error"]


class DeliverySerializer(serializers.ModelSerializer):
    """One order event sent to one endpoint, with every attempt (oldest first)."""

    event_id = serializers.UUIDField(help_text="The webhook-id header: the same on every attempt.")
    event_type = serializers.SerializerMethodField()
    next_attempt_at = serializers.SerializerMethodField(help_text="When the next attempt is due (pending deliveries only).")
    attempts = AttemptSerializer(source="attempt_log", many=True, read_only=True)

    class Meta:
        model = WebhookDelivery
        fields = read_only_fields = [
            "id", "event_id", "event_type", "order_id", "status", "next_attempt_at", "created_at", "completed_at", "attempts"
        ]

    def get_event_type(self, delivery) -> str:
        return WEBHOOK_TYPES.get(delivery.event_type, delivery.event_type)

    def get_next_attempt_at(self, delivery) -> dt.datetime | None:
        return delivery.next_attempt_at if delivery.status == DeliveryStatus.PENDING else None


class DeliveryFilterSerializer(QueryFilterSerializer):
    status = serializers.ChoiceField(choices=DeliveryStatus.choices, required=False)
