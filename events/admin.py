from django.contrib import admin

from events.models import DeadLetter, InboxEntry, OutboxEvent
from orders import services as order_services
from orders_project.admin import NoSaveButtons, ReadOnlyModelAdmin, apply_to_each, operator_name


@admin.register(OutboxEvent)
class OutboxEventAdmin(ReadOnlyModelAdmin):
    list_display = ["id", "event_type", "topic", "key", "created_at", "published_at", "completed_at", "publish_attempts"]
    ordering = ["-id"]
    list_filter = ["event_type", "topic", ("published_at", admin.EmptyFieldListFilter)]
    search_fields = ["event_id", "key"]
    date_hierarchy = "created_at"


@admin.register(InboxEntry)
class InboxEntryAdmin(ReadOnlyModelAdmin):
    list_display = ["handled_at", "handler", "event_id", "redeliveries"]
    ordering = ["-handled_at", "-id"]
    list_filter = ["handler"]
    search_fields = ["event_id"]


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

    @admin.action(description="Re-publish to the event's topic (the fixed value if one is set)")
    def republish(self, request, queryset):
        apply_to_each(
            self,
            request,
            queryset,
            operation=lambda dead_letter: order_services.republish_dead_letter(
                dead_letter_id=dead_letter.pk, requested_by=operator_name(request)
            ),
            done="Re-published",
        )
