"""The orders HTTP API. Thin: validate, call a service or selector, shape the response."""

from __future__ import annotations

import re

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response

from orders import selectors, services
from orders.api_access import sees_all_orders
from orders.models import Order, OrderStatus
from orders.serializers import (
    ErrorSerializer,
    OrderCreatedSerializer,
    OrderCreateSerializer,
    OrderDetailSerializer,
    OrderListFilterSerializer,
    OrderListRowSerializer,
    OrderSerializer,
    OrderStatusSerializer,
    OrderTimelineEntrySerializer,
)

IDEMPOTENCY_HEADER = "Idempotency-Key"
_IDEMPOTENCY_KEY_PATTERN = rf"[\x21-\x7e]{{1,{services.IDEMPOTENCY_KEY_MAX_LENGTH}}}"
_IDEMPOTENCY_KEY_RULE = f"1 to {services.IDEMPOTENCY_KEY_MAX_LENGTH} printable ASCII characters without spaces."

IDEMPOTENCY_PARAMETER = OpenApiParameter(
    IDEMPOTENCY_HEADER,
    {
        "type": "string",
        "minLength": 1,
        "maxLength": services.IDEMPOTENCY_KEY_MAX_LENGTH,
        "pattern": f"^{_IDEMPOTENCY_KEY_PATTERN}$",
    },
    OpenApiParameter.HEADER,
    description="Retry-safe requests: the same key and body get the first request's answer (marked "
    f"Idempotent-Replayed: true) and do nothing again; the same key with another body is a 422. {_IDEMPOTENCY_KEY_RULE}",
)


def error(description: str) -> OpenApiResponse:
    return OpenApiResponse(response=ErrorSerializer, description=description)


def idempotency_key(request) -> str | None:
    """The request's Idempotency-Key, checked (400 if malformed); None if it has none."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not re.fullmatch(_IDEMPOTENCY_KEY_PATTERN, key):
        raise ValidationError({IDEMPOTENCY_HEADER: [_IDEMPOTENCY_KEY_RULE]})
    return key


def client_scoped_key(request) -> str | None:
    """The Idempotency-Key as stored: each client's keys are its own ("client-<id>:<key>")."""
    key = idempotency_key(request)
    if key and request.user.is_authenticated:
        return f"client-{request.user.pk}:{key}"
    return key


class OrderLookup:
    """How a view finds the order in its URL: only among the client's own when it sees only its own."""

    lookup_value_regex = "[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"

    def _owner(self):
        """None (all orders) or the client whose orders alone it may see."""
        return None if sees_all_orders(self.request.user) else self.request.user

    def _order(self, select=selectors.get_order) -> Order:
        try:
            return select(order_id=self.kwargs["pk"], owner=self._owner())
        except Order.DoesNotExist:
            # Someone else's order answers as a missing one: its existence is not disclosed either.
            raise NotFound("Order not found") from None


class OrderViewSet(OrderLookup, viewsets.GenericViewSet):
    """Create orders, list them, read one, its status and its timeline."""

    serializer_class = OrderSerializer
    queryset = Order.objects.none()  # for schema generation; reads go through selectors

    def get_serializer_class(self):
        return OrderCreateSerializer if self.action == "create" else OrderSerializer

    @extend_schema(
        summary="Create an order",
        parameters=[IDEMPOTENCY_PARAMETER],
        request=OrderCreateSerializer,
        responses={
            201: OrderCreatedSerializer,
            400: error("Invalid input (the reason per field), malformed JSON or an invalid Idempotency-Key"),
            413: error("Request body over the size limit"),
            415: error("Content-Type other than application/json"),
            422: error("Idempotency-Key reused with a different body"),
        },
    )
    def create(self, request):
        serializer = OrderCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            creation = services.create_order(
                **serializer.validated_data,
                correlation_id=request.correlation_id,
                idempotency_key=idempotency_key(request),
                owner=request.user if request.user.is_authenticated else None,
            )
        except services.IdempotencyKeyReused as exc:
            return Response({"error": str(exc)}, status=status.HTTP_422_UNPROCESSABLE_ENTITY)
        order_id = str(creation.order.id)
        headers = {"Location": f"/orders/{order_id}"}
        if not creation.created:
            headers["Idempotent-Replayed"] = "true"
        # The response describes the creation, so a replay answers exactly as the first request did.
        body = {"message": "Order created successfully", "order_id": order_id, "status": OrderStatus.CREATED}
        return Response(body, status=status.HTTP_201_CREATED, headers=headers)

    @extend_schema(
        summary="List orders, newest first",
        parameters=[
            OpenApiParameter("status", OpenApiTypes.STR, enum=OrderStatus.values),
            OpenApiParameter("user_id", {"type": "string", "minLength": 1, "maxLength": 64}),
        ],
        responses={
            200: OrderListRowSerializer(many=True),
            400: error("Invalid filter, page or page size"),
            404: error("No such page"),
        },
    )
    def list(self, request):
        filters = OrderListFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        page = self.paginate_queryset(selectors.list_orders(**filters.validated_data, owner=self._owner()))
        return self.get_paginated_response(OrderListRowSerializer(page, many=True).data)

    @extend_schema(
        summary="An order with its items, total, status, payment attempts and notifications",
        responses={200: OrderDetailSerializer, 404: error("No such order")},
    )
    def retrieve(self, request, pk=None):
        return Response(OrderDetailSerializer(self._order(select=selectors.get_order_detail)).data)

    @extend_schema(summary="An order's current status", responses={200: OrderStatusSerializer, 404: error("No such order")})
    @action(detail=True, methods=["get"], url_path="status")
    def order_status(self, request, pk=None):
        return Response(OrderStatusSerializer(self._order()).data)

    @extend_schema(
        summary="An order's timeline: every state change and event, oldest first",
        responses={200: OrderTimelineEntrySerializer(many=True), 404: error("No such order")},
    )
    @action(detail=True, methods=["get"], url_path="events", pagination_class=None)
    def events(self, request, pk=None):
        order = self._order()
        timeline = selectors.order_timeline(order_id=order.id)
        return Response(OrderTimelineEntrySerializer(timeline, many=True).data)
