from django.contrib import admin

from common.admin import ReadOnlyModelAdmin
from payments.models import Payment, SimulatedCharge


@admin.register(Payment)
class PaymentAdmin(ReadOnlyModelAdmin):
    list_display = ["created_at", "order", "attempt", "amount", "currency", "status", "gateway_calls"]
    list_filter = ["status", "currency"]
    search_fields = ["order__id", "idempotency_key", "gateway_reference"]
    list_select_related = ["order"]
    ordering = ["-created_at", "-attempt"]


@admin.register(SimulatedCharge)
class SimulatedChargeAdmin(ReadOnlyModelAdmin):
    list_display = ["created_at", "reference", "idempotency_key", "amount", "approved", "calls"]
    list_filter = ["approved"]
    search_fields = ["idempotency_key", "reference"]
    ordering = ["-created_at", "-id"]
