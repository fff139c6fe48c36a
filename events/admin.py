from django.contrib import admin

from events.models import InboxEntry, OutboxEvent
from orders_project.admin import ReadOnlyModelAdmin


@admin.register(OutboxEvent)
class OutboxEventAdmin(ReadOnlyModelAdmin):
    list_display = ["id", "event_type", "topic", "key", "created_at", "published_at", "publish_attempts"]
    list_filter = ["event_type", "topic", ("published_at", admin.EmptyFieldListFilter)]
    search_fields = ["event_id", "key"]
    date_hierarchy = "created_at"


@admin.register(InboxEntry)
class InboxEntryAdmin(ReadOnlyModelAdmin):
    list_display = ["handled_at", "handler", "event_id", "redeliveries"]
    list_filter = ["handler"]
    search_fields = ["event_id"]
