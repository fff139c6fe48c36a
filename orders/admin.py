from django.contrib import admin

from orders.models import Order, OrderItem, OrderTimelineEntry


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class OrderItemInline(ReadOnlyInline):
    model = OrderItem
    fields = readonly_fields = ["product_id", "product_name", "quantity", "price", "line_total"]


class OrderTimelineInline(ReadOnlyInline):
    model = OrderTimelineEntry
    fields = readonly_fields = ["created_at", "event_type", "status", "event_id", "message"]
    ordering = ["created_at", "id"]


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["id", "user_id", "email", "status", "total_amount", "created_at"]
    list_filter = ["status", "created_at"]
    search_fields = ["id", "user_id", "email", "items__product_id", "correlation_id"]
    date_hierarchy = "created_at"
    readonly_fields = [
        "id",
        "user_id",
        "email",
        "status",
        "total_amount",
        "correlation_id",
        "idempotency_key",
        "created_at",
        "updated_at",
    ]
    fields = readonly_fields
    inlines = [OrderItemInline, OrderTimelineInline]
    show_full_result_count = False  # COUNT(*) over a large orders table on every page is costly

    def has_add_permission(self, request):
        # Orders come in through the API, which validates them and writes the outbox event.
        return False

    def has_delete_permission(self, request, obj=None):
        return False

