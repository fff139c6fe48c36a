"""The peer's ``POST /orders``: validate, commit, queue the chain once committed."""

from __future__ import annotations

import uuid

from django.db import transaction
from rest_framework import status
from rest_framework.decorators import api_view
from rest_framework.response import Response

from devtools.bench.peer import tasks
from events.contract import ORDER_CREATED
from orders.models import Order, OrderItem, OrderStatus, OrderTimelineEntry
from orders.serializers import OrderCreateSerializer
from orders.services import order_total


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
        OrderTimelineEntry.objects.create(
            order=order, status=OrderStatus.CREATED, event_type=ORDER_CREATED, event_id=uuid.uuid4(),
            message="Order created", created_at=order.created_at,
        )
        transaction.on_commit(lambda: tasks.fulfil(order.id))
    body = {"message": "Order created successfully", "order_id": str(order.id), "status": OrderStatus.CREATED}
    return Response(body, status=status.HTTP_201_CREATED, headers={"Location": f"/orders/{order.id}"})
