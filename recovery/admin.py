from django.contrib import admin
from django.utils import timezone

from common.admin import ReadOnlyModelAdmin, one_line_id, operator_action
from events.models import DeadLetter
from recovery.dead_letters import republish_dead_letter
from recovery.models import Redrive, UnfinishedOrder
from recovery.redrives import redrive_now
from recovery.selectors import REDRIVE_COUNT, UNFINISHED_STATUSES, what_it_awaits, with_what_they_await


@admin.register(UnfinishedOrder)
class UnfinishedOrderAdmin(ReadOnlyModelAdmin):
    """Orders not yet terminal, oldest change first: the ones an operator may need to re-drive."""

    list_display = [one_line_id, "status", "awaits", "in_status_for", "redrives", "user_id", "created_at"]
    list_display_links = [one_line_id]
    list_filter = ["status"]
    search_fields = ["id", "user_id", "correlation_id"]
    ordering = ["updated_at"]
    actions = ["redrive_now"]

    def get_queryset(self, request):
        unfinished = super().get_queryset(request).filter(status__in=UNFINISHED_STATUSES).annotate(redrive_count=REDRIVE_COUNT)
        return with_what_they_await(unfinished)

    @admin.display(description="awaits")
    def awaits(self, order):
        # CANCELLING covers a charge under way and refunds: say which, and when it is the operator's turn.
        return what_it_awaits(order)

    @admin.display(description="in this status for")
    def in_status_for(self, order):
        return f"{(timezone.now() - order.updated_at).total_seconds():.0f} s"

    @admin.display(description="re-drives", ordering="redrive_count")
    def redrives(self, order):
        return order.redrive_count

    redrive_now = operator_action(
        permission="recovery.redrive_order",
        description="Re-drive now: send the event each order awaits again",
        operation=lambda order, requested_by: redrive_now(order_id=order.pk, requested_by=requested_by),
        done="Re-driven",
    )

    def has_redrive_order_permission(self, request):
        return request.user.has_perm("recovery.redrive_order")


@admin.register(Redrive)
class RedriveAdmin(ReadOnlyModelAdmin):
    list_display = ["created_at", "order", "event_type", "reason", "requested_by"]
    list_filter = ["reason", "event_type"]
    search_fields = ["order__id", "event_id"]
    list_select_related = ["order"]


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
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

    readonly_fields = [name for name in fields if name != "fixed_value"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        # The one field to change, the fixed value, is there only to be re-published: storing one
        # takes the re-publish permission (Django's change_deadletter alone grants nothing here),
        # and only until the dead letter is re-published (then its page is read-only).
        if obj is not None and obj.republished_at is not None:
            return False
        return self.has_republish_deadletter_permission(request)

    def has_republish_deadletter_permission(self, request):
        return request.user.has_perm("events.republish_deadletter")

    republish = operator_action(
        permission="events.republish_deadletter",
        description="Re-publish to the event's topic (the fixed value if one is set), if the outbox recorded it",
        operation=lambda dead_letter, requested_by: republish_dead_letter(
            dead_letter_id=dead_letter.pk, requested_by=requested_by
        ),
        done="Re-published",
    )
