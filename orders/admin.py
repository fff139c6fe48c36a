from django.contrib import admin
from django.urls import reverse
from django.utils import formats, timezone
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


# The order page's buttons to the operators' forms, which payments/admin.py serves (named here, not
# imported: orders does not import payments): label, URL name, the permission the form needs, and
# the statuses where it applies.
ORDER_FORMS = [
    ("Cancel order…", "admin:payments_cancel_order", "orders.cancel_order", services.CANCELLABLE_STATUSES),
    ("Refund…", "admin:payments_refund_order", "payments.refund_order", services.REFUNDABLE_STATUSES),
]


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = [one_line_id, "status", "total_amount", "customer", "created_at"]
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
        "refunds",
        "related_records",
    ]
    fields = readonly_fields
    inlines = [OrderItemInline, OrderTimelineInline]
    actions = ["retry_payment"]
    show_full_result_count = False  # COUNT(*) over a large orders table on every page is costly

    @admin.display(description="customer", ordering="user_id")
    def customer(self, order):
        # The user id over the email, which may break after its "@": one column, so that the list
        # fits beside the filters (change_list.html).
        local, at, domain = order.email.rpartition("@")
        return format_html("{}<br>{}{}<wbr>{}", order.user_id, local, at, domain)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        order = self.get_object(request, object_id)
        extra_context = {**(extra_context or {}), "order_buttons": self.order_buttons(request, order)}
        return super().change_view(request, object_id, form_url, extra_context)

    def order_buttons(self, request, order) -> list[tuple[str, str]]:
        """(label, URL) of each form the operator may use on this order in its status."""
        if order is None:
            return []
        return [
            (label, reverse(url_name, args=[order.pk]))
            for label, url_name, permission, statuses in ORDER_FORMS
            if order.status in statuses and request.user.has_perm(permission)
        ]

    @admin.display(description="Refunds")
    def refunds(self, order):
        # Through the reverse relation: orders does not import payments.
        rows = format_html_join(
            "",
            '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
            (
                (
                    reverse("admin:payments_refund_change", args=[refund.pk]),
                    formats.date_format(timezone.localtime(refund.created_at), "DATETIME_FORMAT"),
                    refund.amount,
                    refund.get_status_display(),
                    refund.reason,
                    refund.requested_by,
                    refund.gateway_reference or refund.failure_reason,
                )
                for refund in order.refunds.order_by("created_at", "id")
            ),
        )
        if not rows:
            return "None"
        return format_html(
            "<table><thead><tr><th>requested</th><th>amount</th><th>status</th><th>reason</th><th>requested by</th>"
            "<th>gateway reference or failure</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    @admin.display(description="Payments, notifications and events")
    def related_records(self, order):
        # Each list is searched by the order id.
        links = [
            ("payments_payment_changelist", "Payments", order.payments.count()),
            ("payments_refund_changelist", "Refunds", order.refunds.count()),
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

