import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from common.admin import ReadOnlyModelAdmin, operator_action, operator_name, operator_view
from orders.models import Order, OrderStatus
from orders.services import OPERATOR_SOURCE, WHAT_TO_DO_INSTEAD
from payments import selectors, services
from payments.gateway import GatewayUnavailable, MoneyMoved, ProviderRecords, get_gateway
from payments.models import (
    Cancellation,
    Payment,
    Refund,
    RefundStatus,
    SimulatedCharge,
    SimulatedRefund,
    UnmatchedChargeRefund,
    UnreconciledMoney,
)


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


def unreconciled_at_the_provider(gateway) -> list[selectors.Unreconciled]:
    """What the provider moved that the database does not know, as far back as the reconciler's
    check looks (``reconciler.provider_check_days``); none for a gateway that cannot list its records."""
    if not isinstance(gateway, ProviderRecords):
        return []
    since = timezone.now() - dt.timedelta(days=settings.RECONCILER["provider_check_days"])
    return selectors.unreconciled_money(records=gateway.money_moved(since=since))


@dataclass(frozen=True)
class ChargeAnswer:
    """An operator's answer to a charge the database lost: its confirmation page and what it does."""

    title: str
    explanation: str
    submit: str
    # perform(charge, refunded=, requested_by=): (message level, what to tell the operator), or a refusal raised.
    perform: Callable[..., tuple[int, str]]


def _adopt(charge: MoneyMoved, *, refunded: Decimal, requested_by: str) -> tuple[int, str]:
    payment = services.adopt_unmatched_charge(charge=charge, refunded=refunded, requested_by=requested_by, source=OPERATOR_SOURCE)
    return messages.SUCCESS, f"Charge {charge.reference} adopted: order {payment.order_id} is paid (attempt {payment.attempt})"


def _refund_charge(charge: MoneyMoved, *, refunded: Decimal, requested_by: str) -> tuple[int, str]:
    refund = services.refund_unmatched_charge(charge=charge, refunded=refunded, requested_by=requested_by)
    if refund.status == RefundStatus.FAILED:
        return messages.ERROR, f"The gateway declined the refund of charge {charge.reference}: {refund.failure_reason}"
    return messages.SUCCESS, f"Charge {charge.reference} refunded: {refund.amount} ({refund.gateway_reference})"


ADOPT = ChargeAnswer(
    title="Adopt a charge into its order",
    explanation="The charge becomes the order's approved payment (a new attempt, under the charge's own idempotency key), "
    "and the order becomes PAID as if the pipeline had recorded it: ORDER_PAID, and the customer is told. Only a "
    "PROCESSING order with no payment approved nor under way, whose total is the charge's amount, can adopt it, and "
    "only a charge the provider refunded nothing of.",
    submit="Adopt into its order",
    perform=_adopt,
)
REFUND_CHARGE = ChargeAnswer(
    title="Refund a charge",
    explanation="All that is left of the charge (what the provider's refunds listed here did not give back) goes back "
    "to the customer, whether or not the database knows its order. The refund is recorded before the gateway is "
    "asked, under a key of this charge's: refunding again, after a timeout say, is the same refund.",
    submit="Refund",
    perform=_refund_charge,
)


@admin.register(UnreconciledMoney)
class UnreconciledMoneyAdmin(ReadOnlyModelAdmin):
    """The provider's charges and refunds the database does not know, read through the gateway at
    each visit (``payments.selectors.unreconciled_money``); each charge with no payment can be
    adopted into its order, or refunded."""

    def get_queryset(self, request):
        # No table: the page's lines are the provider's records.
        return self.model.objects.none()

    def get_urls(self):
        # Before the ModelAdmin's own, whose "<path:object_id>/" would take them.
        wrap = self.admin_site.admin_view
        return [
            path("charge/<str:reference>/adopt/", wrap(self.adopt_view), name="payments_adopt_unmatched_charge"),
            path("charge/<str:reference>/refund/", wrap(self.refund_view), name="payments_refund_unmatched_charge"),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_permission(request):
            raise PermissionDenied
        gateway = get_gateway()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Unreconciled money: what the provider moved and the database does not know",
            "days": settings.RECONCILER["provider_check_days"],
            "gateway": type(gateway).__name__,
            "can_list": isinstance(gateway, ProviderRecords),
            "can_adopt": request.user.has_perm("payments.adopt_unmatched_charge"),
            "can_refund": request.user.has_perm("payments.refund_unmatched_charge"),
            "lines": selectors.unreconciled_lines(found=unreconciled_at_the_provider(gateway)),
        }
        return TemplateResponse(request, "admin/payments/unreconciled_money.html", context)

    @operator_view(permission="payments.adopt_unmatched_charge")
    def adopt_view(self, request, reference):
        return self.answer_charge(request, reference, answer=ADOPT)

    @operator_view(permission="payments.refund_unmatched_charge")
    def refund_view(self, request, reference):
        return self.answer_charge(request, reference, answer=REFUND_CHARGE)

    def answer_charge(self, request, reference: str, *, answer: ChargeAnswer):
        """The charge ``reference``, read again from the provider: its confirmation page on GET; on
        POST, ``answer.perform`` and what it says (or its refusal); either way back to the list."""
        page = reverse("admin:payments_unreconciledmoney_changelist")
        found = unreconciled_at_the_provider(get_gateway())
        charge = selectors.unmatched_charge(found=found, reference=reference)
        if charge is None:
            gone = f"Charge {reference} is not one the database lacks (any more): nothing done"
            self.message_user(request, gone, level=messages.WARNING)
            return redirect(page)
        if request.method == "POST":
            try:
                level, done = answer.perform(
                    charge.record,
                    refunded=selectors.refunded_unknown(found=found, charge=charge.record),
                    requested_by=operator_name(request),
                )
            except (services.NotAdoptable, services.NotRefundable) as refusal:
                level, done = messages.ERROR, str(refusal)
            except GatewayUnavailable as exc:
                level, done = messages.WARNING, (
                    f"The gateway did not answer ({type(exc).__name__}): the refund of charge {reference} stays "
                    "requested; refund it again to retry, under the same key"
                )
            self.message_user(request, done, level=level)
            return redirect(page)
        (line,) = selectors.unreconciled_lines(found=[charge])
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": answer.title,
            "line": line,
            "explanation": answer.explanation,
            "submit": answer.submit,
            "page": page,
        }
        return TemplateResponse(request, "admin/payments/unmatched_charge_form.html", context)


@admin.register(UnmatchedChargeRefund)
class UnmatchedChargeRefundAdmin(ReadOnlyModelAdmin):
    list_display = ["created_at", "charge_reference", "order_id", "amount", "status", "requested_by", "gateway_calls"]
    list_filter = ["status"]
    search_fields = ["charge_reference", "order_id", "gateway_reference"]


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
