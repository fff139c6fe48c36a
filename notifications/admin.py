from django.contrib import admin

from common.admin import ReadOnlyModelAdmin
from notifications.models import Notification


@admin.register(Notification)
class NotificationAdmin(ReadOnlyModelAdmin):
    # A claim taken over (its sender died holding it) shows in ``takeovers`` and ``claimed_by``.
    list_display = ["created_at", "order", "source_event_type", "channel", "recipient", "status", "claimed_by", "takeovers"]
    list_filter = ["status", "channel", "source_event_type"]
    search_fields = ["order__id", "recipient", "source_event_id"]
    list_select_related = ["order"]
    ordering = ["-created_at", "-id"]
