from django.contrib import admin

from common.admin import ReadOnlyModelAdmin
from events.models import InboxEntry, OutboxEvent


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
