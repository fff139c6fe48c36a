from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from common.admin import ReadOnlyInline, one_line_id, operator_action
from orders import services
from orders.models import Order, OrderItem, OrderTimelineEntry


class OrderItemInline(ReadOnlyInline):
    model = OrderItem
    fields = readonly_fields = ["product_id", "product_name", "quantity", "price", "line_total"]


class OrderTimelineInline(ReadOnlyInline):
    model = OrderTimelineEntry
    fields = readonly_fields = ["created_at", "event_type", "previous_status", "status", "event_id", "message"]
    ordering = ["created_at", "id"]


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = [one_line_id, "status", "total_amount", "user_id", "email", "created_at"]
    list_display_links = [one_line_id]
    ordering = ["-created_at", "-id"]
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
        "related_records",
    ]
    fields = readonly_fields
    inlines = [OrderItemInline, OrderTimelineInline]
    actions = ["retry_payment"]
    show_full_result_count = False  # COUNT(*) over a large orders table on every page is costly

    @admin.display(description="Payments, notifications and events")
    def related_records(self, order):
        # Each list is searched by the order id.
        links = [
            ("payments_payment_changelist", "Payments", order.payments.count()),
            ("notifications_notification_changelist", "Notifications", order.notifications.count()),
            ("events_outboxevent_changelist", "Outbox events", None),
        ]
        return format_html_join(
            " · ",
            '<a href="{}?q={}">{}{}</a>',
            (
                (reverse(f"admin:{name}"), order.id, label, format_html(" ({})", count) if count is not None else "")
                for name, label, count in links
            ),
        )

    retry_payment = operator_action(
        permission="orders.retry_payment",
        description="Retry payment (PAYMENT_FAILED orders): a new charge attempt",
        operation=lambda order, requested_by: services.retry_payment(order_id=order.id, requested_by=requested_by),
        done="Payment retry requested",
    )

    def has_retry_payment_permission(self, request):
        return request.user.has_perm("orders.retry_payment")

    def has_add_permission(self, request):
        # Orders come in through the API, which validates them and writes the outbox event.
        return False

    def has_change_permission(self, request, obj=None):
        # Only the state machine changes an order, through the actions above; saving the page
        # would only touch updated_at, the clock the reconciler reads to find stuck orders.
        return False

    def has_delete_permission(self, request, obj=None):
        return False

