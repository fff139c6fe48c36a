from django.contrib import admin
from django.utils import timezone

from orders_project.admin import ReadOnlyModelAdmin, apply_to_each, one_line_id, operator_name
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

    @admin.action(description="Re-drive now: send the event each order awaits again")
    def redrive_now(self, request, queryset):
        apply_to_each(
            self,
            request,
            queryset,
            operation=lambda order: services.redrive_now(order_id=order.pk, requested_by=operator_name(request)),
            done="Re-driven",
        )


@admin.register(Redrive)
class RedriveAdmin(ReadOnlyModelAdmin):
    list_display = ["created_at", "order", "event_type", "reason", "requested_by"]
    list_filter = ["reason", "event_type"]
    search_fields = ["order__id", "event_id"]
    list_select_related = ["order"]
