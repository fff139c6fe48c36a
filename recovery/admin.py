from django.contrib import admin
from django.utils import timezone

from common.admin import NoSaveButtons, ReadOnlyModelAdmin, one_line_id, operator_action
from events.models import DeadLetter
from recovery import services
from recovery.models import Redrive, UnfinishedOrder
from recovery.selectors import REDRIVE_COUNT, UNFINISHED_STATUSES


@admin.register(UnfinishedOrder)
class UnfinishedOrderAdmin(ReadOnlyModelAdmin):
    """Orders not yet terminal, oldest change first: the ones an operator may need to re-drive."""

    list_display = [one_line_id, "status", "in_status_for", "redrives", "user_id", "created_at"]
    list_display_links = [one_line_id]
    list_filter = ["status"]
    search_fields = ["id", "user_id", "correlation_id"]
    ordering = ["updated_at"]
    actions = ["redrive_now"]

    def get_queryset(self, request):
        return super().get_queryset(request).filter(status__in=UNFINISHED_STATUSES).annotate(redrive_count=REDRIVE_COUNT)

    @admin.display(description="in this status for")
    def in_status_for(self, order):
        return f"{(timezone.now() - order.updated_at).total_seconds():.0f} s"

    @admin.display(description="re-drives", ordering="redrive_count")
    def redrives(self, order):
        return order.redrive_count

    redrive_now = operator_action(
        description="Re-drive now: send the event each order awaits again",
        operation=lambda order, requested_by: services.redrive_now(order_id=order.pk, requested_by=requested_by),
        done="Re-driven",
    )


@admin.register(Redrive)
class RedriveAdmin(ReadOnlyModelAdmin):
    list_display = ["created_at", "order", "event_type", "reason", "requested_by"]
    list_filter = ["reason", "event_type"]
    search_fields = ["order__id", "event_id"]
    list_select_related = ["order"]


@admin.register(DeadLetter)
class DeadLetterAdmin(NoSaveButtons, admin.ModelAdmin):
    """Dead letters: read why, optionally store a fixed value, re-publish."""

    list_display = ["received_at", "reason", "source", "event_type", "key", "original_topic", "republished_at"]
    list_filter = ["reason", "source", "event_type", ("republished_at", admin.EmptyFieldListFilter)]
    search_fields = ["key", "event_id", "error"]
    actions = ["republish"]
    fields = [
        "reason",
        "error",
        "source",
        "original_topic",
        "event_type",
        "event_id",
        "key",
        "headers",
        "value",
        "fixed_value",
        "received_at",
        "republished_at",
        "republished_by",
    ]

    def get_readonly_fields(self, request, obj=None):
        editable = {"fixed_value"} if obj is None or obj.republished_at is None else set()
        return [name for name in self.fields if name not in editable]

    def has_add_permission(self, request):
        return False

    republish = operator_action(
        description="Re-publish to the event's topic (the fixed value if one is set)",
        operation=lambda dead_letter, requested_by: services.republish_dead_letter(
            dead_letter_id=dead_letter.pk, requested_by=requested_by
        ),
        done="Re-published",
    )
