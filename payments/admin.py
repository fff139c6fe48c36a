from django.contrib import admin

from common.admin import ReadOnlyModelAdmin
from payments.models import Payment, SimulatedCharge, SimulatedRefund


@admin.register(Payment)
class PaymentAdmin(ReadOnlyModelAdmin):
    list_display = ["created_at", "order", "attempt", "amount", "currency", "status", "gateway_calls"]
    list_filter = ["status", "currency"]
    search_fields = ["order__id", "idempotency_key", "gateway_reference"]
    list_select_related = ["order"]
    ordering = ["-created_at", "-attempt"]


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
