from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from common.admin import ReadOnlyModelAdmin, operator_action, operator_name, operator_view
from orders.models import Order, OrderStatus
from orders.services import OPERATOR_SOURCE, WHAT_TO_DO_INSTEAD
from payments import selectors, services
from payments.models import Cancellation, Payment, Refund, SimulatedCharge, SimulatedRefund


@admin.register(Payment)
class PaymentAdmin(ReadOnlyModelAdmin):
    list_display = ["created_at", "order", "attempt", "amount", "currency", "status", "gateway_calls"]
    list_filter = ["status", "currency"]
    search_fields = ["order__id", "idempotency_key", "gateway_reference"]
    list_select_related = ["order"]
    ordering = ["-created_at", "-attempt"]


@admin.display(description="order", ordering="order_id")
def order_link(obj):
    """The order's id, on one line, linked to the order's page."""
    url = reverse("admin:orders_order_change", args=[obj.order_id])
    return format_html('<a href="{}"><code style="white-space: nowrap">{}</code></a>', url, obj.order_id)


class CancelForm(forms.Form):
    reason = forms.CharField(max_length=255, required=False, help_text="Recorded with the cancellation and on the order's timeline.")


class RefundForm(forms.Form):
    amount = forms.DecimalField(
        max_digits=16, decimal_places=2, min_value=Decimal("0.01"), required=False, help_text="Blank: all that is left."
    )
    reason = forms.CharField(max_length=255, required=False, help_text="Recorded with the refund and on the order's timeline.")


def answer_order_form(modeladmin, request, order, *, form_class, initial: dict, title: str, explanation: str, submit: str, perform):
    """An operator's form about one order: shown on GET; on a valid POST, ``perform(order,
    cleaned_data, requested_by=)`` returns what to tell the operator, or raises the service's
    refusal, shown as an error; either way back to the order's page."""
    order_page = reverse("admin:orders_order_change", args=[order.pk])
    form = form_class(request.POST) if request.method == "POST" else form_class(initial=initial)
    if form.is_valid():
        try:
            done = perform(order, form.cleaned_data, requested_by=operator_name(request))
        except (services.NotCancellable, services.NotRefundable) as refusal:
            modeladmin.message_user(request, str(refusal), level=messages.ERROR)
        else:
            modeladmin.message_user(request, done, level=messages.SUCCESS)
        return redirect(order_page)
    context = {
        **modeladmin.admin_site.each_context(request),
        "opts": Order._meta,
        "title": title,
        "order": order,
        "order_page": order_page,
        "explanation": explanation,
        "form": form,
        "submit": submit,
    }
    return TemplateResponse(request, "admin/payments/order_form.html", context)


# What cancelling does, by the order's status (payments.services.cancel_order).
CANCELLING_DOES = {
    **dict.fromkeys([OrderStatus.CREATED, OrderStatus.PAYMENT_FAILED], "Nothing was charged: the order ends CANCELLED at once."),
    OrderStatus.FAILED: "It is parked: it ends CANCELLED at once, or, if a charge is still unresolved, once that is (refunded in full if approved).",
    OrderStatus.PROCESSING: "A charge may be under way: the order ends CANCELLED whatever its outcome; an approved charge is refunded in full.",
    OrderStatus.PAID: "All that was charged is refunded, then the order ends CANCELLED.",
    OrderStatus.PARTIALLY_REFUNDED: "The rest of the charge is refunded, then the order ends CANCELLED.",
    OrderStatus.CANCELLING: "It is being cancelled already: cancelling again changes nothing.",
}


def _cancel(order, data, *, requested_by: str) -> str:
    cancellation = services.cancel_order(
        order_id=order.pk, requested_by=requested_by, reason=data["reason"], source=OPERATOR_SOURCE
    ).cancellation
    refunding = f", refunding {cancellation.refund.amount}" if cancellation.refund else ""
    return f"Cancellation of order {order.pk} recorded: it is {cancellation.answered_status}{refunding}"


def _refund(order, data, *, requested_by: str) -> str:
    refund = services.request_refund(
        order_id=order.pk, requested_by=requested_by, amount=data["amount"], reason=data["reason"], source=OPERATOR_SOURCE
    ).refund
    return f"Refund of {refund.amount} requested for order {order.pk}: the gateway is asked next"


class OrderFormAdmin(ReadOnlyModelAdmin):
    """A read-only list whose admin also serves ``order_form_view``, an operator's form about one
    order, named ``admin:payments_<form_name>_order`` (the name orders/admin.py links to)."""

    form_name: str

    def get_urls(self):
        # Before the ModelAdmin's own, whose "<path:object_id>/" would take it.
        view = self.admin_site.admin_view(self.order_form_view)
        name = f"payments_{self.form_name}_order"
        return [path(f"order/<uuid:order_id>/{self.form_name}/", view, name=name), *super().get_urls()]


@admin.register(Refund)
class RefundAdmin(OrderFormAdmin):
    form_name = "refund"
    list_display = ["created_at", order_link, "amount", "status", "requested_by"]  # the rest on its page
    list_filter = ["status", "created_at", "requested_by"]
    search_fields = ["order__id", "id", "gateway_reference"]
    date_hierarchy = "created_at"
    ordering = ["-created_at", "-id"]
    actions = ["retry_refund"]

    retry_refund = operator_action(
        permission="payments.retry_refund",
        description="Retry refund (FAILED refunds): ask the gateway again",
        operation=lambda refund, requested_by: services.retry_refund(
            refund_id=refund.pk, requested_by=requested_by, source=OPERATOR_SOURCE
        ),
        done="Refund retried",
    )

    def has_retry_refund_permission(self, request):
        return request.user.has_perm("payments.retry_refund")

    @operator_view(permission="payments.refund_order")
    def order_form_view(self, request, order_id):
        order = get_object_or_404(Order, pk=order_id)
        remaining = selectors.refundable_amount(order_id=order.pk)
        return answer_order_form(
            self,
            request,
            order,
            form_class=RefundForm,
            initial={"amount": remaining},
            title="Refund an order",
            explanation=f"Left to refund: {remaining} of {order.total_amount}. The refund is recorded now, and the gateway gives it back next.",
            submit="Refund",
            perform=_refund,
        )


@admin.register(Cancellation)
class CancellationAdmin(OrderFormAdmin):
    form_name = "cancel"
    list_display = ["created_at", order_link, "from_status", "answered_status", "requested_by"]  # the rest on its page
    list_filter = ["from_status", "created_at"]
    search_fields = ["order__id"]
    date_hierarchy = "created_at"

    @operator_view(permission="orders.cancel_order")
    def order_form_view(self, request, order_id):
        order = get_object_or_404(Order, pk=order_id)
        return answer_order_form(
            self,
            request,
            order,
            form_class=CancelForm,
            initial={},
            title="Cancel an order",
            explanation=CANCELLING_DOES.get(order.status, f"It cannot be cancelled: {WHAT_TO_DO_INSTEAD[order.status]}."),
            submit="Cancel the order",
            perform=_cancel,
        )


# The simulated provider's ledger (payments/simulator.py): what a real provider's dashboard shows.
@admin.register(SimulatedCharge)
class SimulatedChargeAdmin(ReadOnlyModelAdmin):
    list_display = ["created_at", "reference", "order_id", "idempotency_key", "amount", "approved", "calls"]
    list_filter = ["approved"]
    search_fields = ["idempotency_key", "reference", "order_id"]
    ordering = ["-created_at", "-id"]


@admin.register(SimulatedRefund)
class SimulatedRefundAdmin(ReadOnlyModelAdmin):
    list_display = ["created_at", "reference", "charge_reference", "amount", "approved", "calls"]
    list_filter = ["approved"]
    search_fields = ["idempotency_key", "reference", "charge_reference"]
    ordering = ["-created_at", "-id"]
