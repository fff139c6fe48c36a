"""Webhook endpoints and deliveries for operators: read-only, secrets never shown, and a
Redeliver action (its own permission) that sends a delivery once more, now, with its webhook-id."""

import structlog
from django.contrib import admin

from common.admin import ReadOnlyInline, ReadOnlyModelAdmin, one_line_id, operator_action
from messaging.routes import webhook_send_task
from webhooks import services
from webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint

logger = structlog.get_logger(__name__)


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(ReadOnlyModelAdmin):
    list_display = [one_line_id, "url", "owner", "enabled", "disabled_reason", "failing_since", "created_at"]
    list_display_links = [one_line_id]
    list_filter = ["enabled"]
    search_fields = ["id", "url", "owner__username"]
    list_select_related = ["owner"]
    # Every field but the secrets (the current one and the one before a rotation).
    fields = [
        "id",
        "owner",
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


class WebhookAttemptInline(ReadOnlyInline):
    model = WebhookAttempt
    fields = readonly_fields = ["started_at", "duration_ms", "status_code", "response_excerpt", "error"]


def redeliver_now(delivery: WebhookDelivery, *, requested_by: str) -> None:
    """Pending again, its send queued on the webhooks queue at once; who asked goes to the log."""
    services.redeliver(delivery=delivery)
    webhook_send_task(str(delivery.pk)).apply_async()
    logger.info("webhook_redelivered", delivery_id=str(delivery.pk), event_id=str(delivery.event_id), requested_by=requested_by)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyModelAdmin):
    list_display = [one_line_id, "created_at", "event_type", "endpoint", "order_id", "status", "attempts", "last_status_code", "next_attempt_at"]
    list_display_links = [one_line_id]
    list_filter = ["status", "event_type", "endpoint"]
    search_fields = ["id", "event_id", "order_id"]
    list_select_related = ["endpoint"]
    inlines = [WebhookAttemptInline]
    actions = ["redeliver"]

    redeliver = operator_action(
        permission="webhooks.redeliver_webhookdelivery",
        description="Redeliver: one more attempt now, with the same webhook-id",
        operation=redeliver_now,
        done="Redelivery queued",
    )

    def has_redeliver_webhookdelivery_permission(self, request):
        return request.user.has_perm("webhooks.redeliver_webhookdelivery")
