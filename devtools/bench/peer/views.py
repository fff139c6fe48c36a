"""The peer's views: ``POST /orders`` (validate, commit, queue the chain once committed), and
cancelling and refunding an order (lock it, decide, commit; the gateway is called by a task)."""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.db import transaction
from django.shortcuts import get_object_or_404
from rest_framework import status
from rest_framework.decorators import api_view
from rest_framework.response import Response

from devtools.bench.peer import tasks
from events.contract import ORDER_CANCELLED, ORDER_CREATED
from orders.models import Order, OrderItem, OrderStatus, OrderTimelineEntry
from orders.serializers import OrderCreateSerializer
from orders.services import order_total
from payments.models import Payment, PaymentStatus
from payments.serializers import CancelRequestSerializer, RefundRequestSerializer, RefundSerializer

# Nothing taken yet (a charge under way finds the order cancelled and gives back what it took).
CANCELLED_AT_ONCE = (OrderStatus.CREATED, OrderStatus.PROCESSING, OrderStatus.PAYMENT_FAILED)
REFUNDABLE = (OrderStatus.PAID, OrderStatus.PARTIALLY_REFUNDED)


@api_view(["POST"])
def create_order(request):
    serializer = OrderCreateSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    data = serializer.validated_data
    with transaction.atomic():
        order = Order.objects.create(
            user_id=data["user_id"],
            email=data["email"],
            total_amount=order_total(items=data["items"]),
            correlation_id=request.correlation_id,
        )
        OrderItem.objects.bulk_create([OrderItem(order=order, **item) for item in data["items"]])
        # The id of the step, as the product's event id: the notification about it refers to it.
        entry = OrderTimelineEntry.objects.create(
            order=order, status=OrderStatus.CREATED, event_type=ORDER_CREATED, event_id=uuid.uuid4(),
            message="Order created", created_at=order.created_at,
        )
        transaction.on_commit(lambda: tasks.announce(entry_id=entry.pk, event_type=ORDER_CREATED, refunded=None))
        transaction.on_commit(lambda: tasks.fulfil(order.id))
    body = {"message": "Order created successfully", "order_id": str(order.id), "status": OrderStatus.CREATED}
    return Response(body, status=status.HTTP_201_CREATED, headers={"Location": f"/orders/{order.id}"})


def _remaining(payment: Payment) -> Decimal:
    """What is left of a charge to refund: refunds requested or done are reserved on it."""
    return payment.amount - payment.refund_reserved


@api_view(["POST"])
def cancel_order(request, pk):
    serializer = CancelRequestSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    reason = serializer.validated_data["reason"]
    with transaction.atomic():
        order = get_object_or_404(Order.objects.select_for_update(), pk=pk)
        if order.status in CANCELLED_AT_ONCE:
            tasks.record_event(order, to_status=OrderStatus.CANCELLED, event_type=ORDER_CANCELLED,
                               message=f"Cancelled by the customer: {reason}" if reason else "Cancelled by the customer")
            code = status.HTTP_200_OK
        elif order.status in REFUNDABLE:
            payment = Payment.objects.get(order=order, status=PaymentStatus.APPROVED)
            tasks.mark_cancelling(order, message="Cancelled by the customer: refunding what was captured")
            tasks.start_refund(order, payment=payment, amount=_remaining(payment),
                               reason=reason or tasks.CANCELLATION_REFUND_REASON, requested_by="customer")
            code = status.HTTP_202_ACCEPTED
        else:
            return Response({"error": f"Order {order.pk} is {order.status}: it cannot be cancelled"},
                            status=status.HTTP_409_CONFLICT)
    return Response({"order_id": str(order.pk), "status": order.status}, status=code)


@api_view(["POST"])
def create_refund(request, pk):
    serializer = RefundRequestSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    with transaction.atomic():
        order = get_object_or_404(Order.objects.select_for_update(), pk=pk)
        if order.status not in REFUNDABLE:
            return Response({"error": f"Order {order.pk} is {order.status}, not paid"}, status=status.HTTP_409_CONFLICT)
        payment = Payment.objects.get(order=order, status=PaymentStatus.APPROVED)
        remaining = _remaining(payment)
        amount = serializer.validated_data.get("amount") or remaining
        if not 0 < amount <= remaining:
            return Response({"error": f"Order {order.pk}: {remaining} remains of its charge"}, status=status.HTTP_409_CONFLICT)
        refund = tasks.start_refund(order, payment=payment, amount=amount, reason=serializer.validated_data["reason"],
                                    requested_by="customer")
    return Response(RefundSerializer(refund).data, status=status.HTTP_202_ACCEPTED)
