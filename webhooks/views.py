"""The webhooks HTTP API: a client's receivers and what was sent to them. Thin: validate, call a
service or selector, shape the response. A client sees only its own endpoints and deliveries."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.response import Response

from messaging.routes import webhook_send_task
from orders.api_access import sees_all_orders
from orders.views import OrderLookup, error
from webhooks import selectors, services
from webhooks.addresses import UnsafeUrl
from webhooks.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from webhooks.serializers import (
    DeliveryFilterSerializer,
    DeliverySerializer,
    EndpointCreateSerializer,
    EndpointSerializer,
    EndpointUpdateSerializer,
    EndpointWithSecretSerializer,
)

UNSAFE_URL = error("The URL may not be sent to (the reason): not https, or not a public address")


def _refused(exc: UnsafeUrl) -> Response:
    return Response({"error": f"Refused URL: {exc}"}, status=status.HTTP_422_UNPROCESSABLE_ENTITY)


class ClientScoped:
    """A client sees only its own endpoints and their deliveries: another client's answer 404."""

    lookup_value_regex = OrderLookup.lookup_value_regex

    def _owner(self):
        """None (everything: staff, or the API open in the local default), or the client whose own alone it may see."""
        return None if sees_all_orders(self.request.user) else self.request.user


class WebhookEndpointViewSet(ClientScoped, viewsets.GenericViewSet):
    queryset = WebhookEndpoint.objects.none()  # for schema generation; reads go through selectors
    serializer_class = EndpointSerializer

    def _endpoint(self) -> WebhookEndpoint:
        try:
            return selectors.get_endpoint(endpoint_id=self.kwargs["pk"], owner=self._owner())
        except WebhookEndpoint.DoesNotExist:
            # Another client's endpoint answers as a missing one.
            raise NotFound("Webhook endpoint not found") from None

    @extend_schema(
        summary="Register a webhook receiver; the answer carries its signing secret, once",
        request=EndpointCreateSerializer,
        responses={201: EndpointWithSecretSerializer, 400: error("Invalid input (the reason per field)"), 422: UNSAFE_URL},
    )
    def create(self, request):
        serializer = EndpointCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            endpoint = services.create_endpoint(
                **serializer.validated_data, owner=request.user if request.user.is_authenticated else None
            )
        except UnsafeUrl as exc:
            return _refused(exc)
        return Response(
            EndpointWithSecretSerializer(endpoint).data,
            status=status.HTTP_201_CREATED,
            headers={"Location": f"/webhook-endpoints/{endpoint.id}"},
        )

    @extend_schema(
        summary="The client's webhook endpoints, oldest first",
        responses={200: EndpointSerializer(many=True), 400: error("Invalid page or page size"), 404: error("No such page")},
    )
    def list(self, request):
        page = self.paginate_queryset(selectors.list_endpoints(owner=self._owner()))
        return self.get_paginated_response(EndpointSerializer(page, many=True).data)

    @extend_schema(summary="A webhook endpoint", responses={200: EndpointSerializer, 404: error("No such endpoint")})
    def retrieve(self, request, pk=None):
        return Response(EndpointSerializer(self._endpoint()).data)

    @extend_schema(
        summary="Change a webhook endpoint's URL, event types, description, or enable or disable it",
        request=EndpointUpdateSerializer,
        responses={
            200: EndpointSerializer,
            400: error("Invalid input (the reason per field)"),
            404: error("No such endpoint"),
            422: UNSAFE_URL,
        },
    )
    def partial_update(self, request, pk=None):
        endpoint = self._endpoint()
        serializer = EndpointUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            endpoint = services.update_endpoint(endpoint=endpoint, **serializer.validated_data)
        except UnsafeUrl as exc:
            return _refused(exc)
        return Response(EndpointSerializer(endpoint).data)

    @extend_schema(
        summary="Delete a webhook endpoint and its deliveries",
        responses={204: OpenApiResponse(description="Deleted"), 404: error("No such endpoint")},
    )
    def destroy(self, request, pk=None):
        services.delete_endpoint(endpoint=self._endpoint())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="A new signing secret, shown this once; the old one still signs deliveries for the grace period",
        request=None,
        responses={200: EndpointWithSecretSerializer, 404: error("No such endpoint")},
    )
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request, pk=None):
        endpoint = services.rotate_secret(endpoint=self._endpoint())
        return Response(EndpointWithSecretSerializer(endpoint).data)

    @extend_schema(
        summary="What was sent to a webhook endpoint, newest first, each delivery with its attempts",
        parameters=[OpenApiParameter("status", OpenApiTypes.STR, enum=DeliveryStatus.values)],
        responses={
            200: DeliverySerializer(many=True),
            400: error("Invalid filter, page or page size"),
            404: error("No such endpoint, or no such page"),
        },
    )
    @action(detail=True, methods=["get"])
    def deliveries(self, request, pk=None):
        endpoint = self._endpoint()
        filters = DeliveryFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        page = self.paginate_queryset(selectors.endpoint_deliveries(endpoint_id=endpoint.id, **filters.validated_data))
        return self.get_paginated_response(DeliverySerializer(page, many=True).data)


class WebhookDeliveryViewSet(ClientScoped, viewsets.GenericViewSet):
    queryset = WebhookDelivery.objects.none()  # for schema generation; reads go through selectors
    serializer_class = DeliverySerializer

    @extend_schema(
        summary="Send a delivery once more, now, with the same webhook-id",
        request=None,
        responses={
            202: OpenApiResponse(DeliverySerializer, description="Pending again: the attempt is queued"),
            404: error("No such delivery"),
        },
    )
    @action(detail=True, methods=["post"])
    def redeliver(self, request, pk=None):
        try:
            delivery = selectors.get_delivery(delivery_id=self.kwargs["pk"], owner=self._owner())
        except WebhookDelivery.DoesNotExist:
            raise NotFound("Webhook delivery not found") from None
        delivery = services.redeliver(delivery=delivery)
        webhook_send_task(str(delivery.id)).apply_async()
        return Response(DeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)
