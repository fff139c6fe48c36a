"""Cancelling and refunding an order over HTTP. Thin: validate, call a service, shape the response."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status, viewsets
from rest_framework.response import Response

from orders.models import Order
from orders.views import IDEMPOTENCY_PARAMETER, OrderLookup, client_scoped_key, error
from payments import selectors, services
from payments.serializers import CancellationSerializer, CancelRequestSerializer, RefundRequestSerializer, RefundSerializer

API_SOURCE = "order-api"


def _requested_by(request) -> str:
    return f"client {request.user.pk}" if request.user.is_authenticated else "client"


def _answer(body, *, code: int, replayed: bool) -> Response:
    return Response(body, status=code, headers={"Idempotent-Replayed": "true"} if replayed else None)


# What each refusal of the services answers.
REFUSALS = {
    services.RequestKeyReused: status.HTTP_422_UNPROCESSABLE_ENTITY,
    services.NotCancellable: status.HTTP_409_CONFLICT,
    services.NotRefundable: status.HTTP_409_CONFLICT,
}


def _refusal(exc: Exception) -> Response:
    return Response({"error": str(exc)}, status=REFUSALS[type(exc)])


class OrderMoneyViewSet(OrderLookup, viewsets.GenericViewSet):
    """Cancel an order, refund it, list its refunds."""

    queryset = Order.objects.none()  # for schema generation; reads go through selectors
    serializer_class = RefundSerializer
    # An order's refunds are few: one list, not pages (the schema says so too).
    pagination_class = None

    @extend_schema(
        summary="Cancel an order; a paid one is refunded in full",
        parameters=[IDEMPOTENCY_PARAMETER],
        request=CancelRequestSerializer,
        responses={
            200: OpenApiResponse(CancellationSerializer, description="Cancelled at once: nothing was charged"),
            202: OpenApiResponse(
                CancellationSerializer,
                description="Cancellation accepted: the order ends CANCELLED once its charge under way is resolved "
                "and what was captured is refunded. A repeated request gets the same answer.",
            ),
            400: error("Invalid input or Idempotency-Key"),
            404: error("No such order"),
            409: error("The order is already cancelled, or refunded in full"),
            422: error("Idempotency-Key reused with a different request"),
        },
    )
    def cancel(self, request, pk=None):
        order = self._order()
        serializer = CancelRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            outcome = services.cancel_order(
                order_id=order.pk,
                requested_by=_requested_by(request),
                reason=serializer.validated_data["reason"],
                request_key=client_scoped_key(request),
                source=API_SOURCE,
            )
        except tuple(REFUSALS) as exc:
            return _refusal(exc)
        cancellation = outcome.cancellation
        code = status.HTTP_200_OK if cancellation.answered_status == "CANCELLED" else status.HTTP_202_ACCEPTED
        return _answer(CancellationSerializer(cancellation).data, code=code, replayed=outcome.replayed)

    @extend_schema(
        summary="Refund a paid order, in full or in part",
        parameters=[IDEMPOTENCY_PARAMETER],
        request=RefundRequestSerializer,
        responses={
            202: OpenApiResponse(RefundSerializer, description="Refund requested: the pipeline gives it back"),
            400: error("Invalid amount, reason or Idempotency-Key"),
            404: error("No such order"),
            409: error("The order is not paid, or the amount is more than remains of its charge"),
            422: error("Idempotency-Key reused with a different request"),
        },
    )
    def create_refund(self, request, pk=None):
        order = self._order()
        serializer = RefundRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            outcome = services.request_refund(
                order_id=order.pk,
                requested_by=_requested_by(request),
                amount=serializer.validated_data.get("amount"),
                reason=serializer.validated_data["reason"],
                request_key=client_scoped_key(request),
                source=API_SOURCE,
            )
        except tuple(REFUSALS) as exc:
            return _refusal(exc)
        return _answer(RefundSerializer(outcome.refund).data, code=status.HTTP_202_ACCEPTED, replayed=outcome.replayed)

    @extend_schema(
        summary="An order's refunds, oldest first",
        responses={200: RefundSerializer(many=True), 404: error("No such order")},
    )
    def list_refunds(self, request, pk=None):
        order = self._order()
        return Response(RefundSerializer(selectors.order_refunds(order_id=order.pk), many=True).data)
