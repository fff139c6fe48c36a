"""Reads of orders. Views and other apps read orders through these functions."""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import Count, QuerySet

from events.contract import isoformat
from orders.models import Order, OrderTimelineEntry


def list_orders(*, status: str | None = None, user_id: str | None = None, owner=None) -> QuerySet[Order]:
    """Orders, newest first, each with its ``item_count`` (a list shows no items); only
    ``owner``'s when one is given."""
    # Meta.ordering does not apply to a query with GROUP BY: say it.
    orders = Order.objects.annotate(item_count=Count("items")).order_by("-created_at", "-id")
    if owner is not None:
        orders = orders.filter(owner=owner)
    if status:
        orders = orders.filter(status=status)
    if user_id:
        orders = orders.filter(user_id=user_id)
    return orders


def get_order(*, order_id: uuid.UUID, owner=None) -> Order:
    """The order with its items (only if ``owner``'s, when one is given); raises ``Order.DoesNotExist``."""
    orders = Order.objects.prefetch_related("items")
    if owner is not None:
        orders = orders.filter(owner=owner)
    return orders.get(pk=order_id)


def get_order_detail(*, order_id: uuid.UUID, owner=None) -> Order:
    """As ``get_order``, with its payment attempts, refunds and notifications."""
    orders = Order.objects.prefetch_related("items", "payments", "refunds", "notifications")
    if owner is not None:
        orders = orders.filter(owner=owner)
    return orders.get(pk=order_id)


def get_order_status_and_total(*, order_id: uuid.UUID) -> tuple[str, Any]:
    """(status, total_amount) in one small query; raises ``Order.DoesNotExist``."""
    return Order.objects.values_list("status", "total_amount").get(pk=order_id)


def orders_with_items(*, order_ids: set[str]) -> dict[str, Order]:
    """Those of the orders that exist, with their items, by id."""
    return {str(order.id): order for order in Order.objects.prefetch_related("items").filter(pk__in=order_ids)}


def parse_order_id(text: str) -> uuid.UUID | None:
    """The order id ``text`` spells (as another system keeps it: a provider's metadata), or None if
    it spells no UUID."""
    try:
        return uuid.UUID(text)
    except (TypeError, ValueError):
        return None


def order_statuses(*, order_ids: list[str]) -> dict[str, str]:
    """The status of each of the orders that exist, by the id as given (see ``parse_order_id``)."""
    given = {parsed: text for text in order_ids if (parsed := parse_order_id(text)) is not None}
    return {given[pk]: status for pk, status in Order.objects.filter(pk__in=given).values_list("id", "status")}


def announced_statuses(*, order_ids: set[str], event_ids: set[str]) -> dict[tuple[str, str, str], str]:
    """(order id, event id, event type) -> the status the order announced with that event (from
    the timeline entry written with it), for the events of ``event_ids`` the orders wrote."""
    entries = OrderTimelineEntry.objects.filter(order_id__in=order_ids, event_id__in=event_ids).order_by("id")
    statuses: dict[tuple[str, str, str], str] = {}
    for order_id, event_id, event_type, status in entries.values_list("order_id", "event_id", "event_type", "status"):
        statuses.setdefault((str(order_id), str(event_id), event_type), status)
    return statuses


def get_order_by_idempotency_key(*, idempotency_key: str) -> Order | None:
    return Order.objects.filter(idempotency_key=idempotency_key).first()


def order_timeline(*, order_id: uuid.UUID) -> QuerySet[OrderTimelineEntry]:
    return OrderTimelineEntry.objects.filter(order_id=order_id).order_by("created_at", "id")


def order_snapshot(*, order: Order, items: list | None = None) -> dict[str, Any]:
    """The ``order`` object of the event contract. ``items``: the order's items, if at hand."""
    return {
        "id": str(order.id),
        "user_id": order.user_id,
        "email": order.email,
        "items": [
            {
                "product_id": item.product_id,
                "product_name": item.product_name,
                "quantity": item.quantity,
                "price": str(item.price),
            }
            for item in (order.items.all() if items is None else items)
        ],
        "total_amount": str(order.total_amount),
        "status": order.status,
        "timestamps": {"created_at": isoformat(order.created_at), "updated_at": isoformat(order.updated_at)},
    }
