from django.contrib import admin

from common.admin import ReadOnlyModelAdmin
from notifications.models import Notification


@admin.register(Notification)
class NotificationAdmin(ReadOnlyModelAdmin):
    list_display = ["created_at", "order", "source_event_type", "channel", "recipient", "status"]
    list_filter = ["status", "channel", "source_event_type"]
    search_fields = ["order__id", "recipient", "source_event_id"]
    list_select_related = ["order"]
    ordering = ["-created_at", "-id"]
