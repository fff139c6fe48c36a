"""Reads of webhook endpoints and deliveries. Views read them through these functions."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet

from webhooks.models import WebhookDelivery, WebhookEndpoint


def list_endpoints(*, owner=None) -> QuerySet[WebhookEndpoint]:
    """Endpoints, oldest first; only ``owner``'s when one is given."""
    endpoints = WebhookEndpoint.objects.order_by("created_at", "id")
    return endpoints if owner is None else endpoints.filter(owner=owner)


def get_endpoint(*, endpoint_id: uuid.UUID, owner=None) -> WebhookEndpoint:
    """The endpoint (only if ``owner``'s, when one is given); raises ``WebhookEndpoint.DoesNotExist``."""
    return list_endpoints(owner=owner).get(pk=endpoint_id)


def endpoint_deliveries(*, endpoint_id: uuid.UUID, status: str | None = None) -> QuerySet[WebhookDelivery]:
    """The endpoint's deliveries, newest first, each with its attempts (oldest first)."""
    deliveries = (
        WebhookDelivery.objects.filter(endpoint_id=endpoint_id).prefetch_related("attempt_log").order_by("-created_at", "-id")
    )
    return deliveries.filter(status=status) if status else deliveries


def get_delivery(*, delivery_id: uuid.UUID, owner=None) -> WebhookDelivery:
    """The delivery (only if one of ``owner``'s endpoints', when one is given); raises
    ``WebhookDelivery.DoesNotExist``."""
    deliveries = WebhookDelivery.objects.select_related("endpoint")
    if owner is not None:
        deliveries = deliveries.filter(endpoint__owner=owner)
    return deliveries.get(pk=delivery_id)
