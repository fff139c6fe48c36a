from django.contrib import admin

from events.models import OutboxEvent


@admin.register(OutboxEvent)
class OutboxEventAdmin(admin.ModelAdmin):
    list_display = ["id", "event_type", "topic", "key", "created_at", "published_at", "publish_attempts"]
    list_filter = ["event_type", "topic", ("published_at", admin.EmptyFieldListFilter)]
    search_fields = ["event_id", "key"]
    date_hierarchy = "created_at"
    readonly_fields = [field.name for field in OutboxEvent._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
