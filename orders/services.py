"""Writes to orders. Each function owns its transaction."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import structlog
from django.db import IntegrityError, transaction

from events.contract import ORDER_CREATED
from events.services import enqueue_event
from orders.models import Order, OrderItem, OrderStatus, OrderTimelineEntry
from orders.selectors import get_order_by_idempotency_key, order_snapshot

logger = structlog.get_logger(__name__)

EVENT_SOURCE = "order-api"


class IdempotencyKeyReused(Exception):
    """The Idempotency-Key was already used for a request with a different body."""

    def __init__(self, order: Order):
        super().__init__(f"Idempotency-Key already used for order {order.id} with a different request body")
        self.order = order


@dataclass(frozen=True)
class OrderCreation:
    order: Order
    # False when an earlier request with the same Idempotency-Key and body made the order.
    created: bool


def order_total(*, items: list[dict[str, Any]]) -> Decimal:
    return sum((item["price"] * item["quantity"] for item in items), Decimal("0.00"))


def request_fingerprint(*, user_id: str, email: str, items: list[dict[str, Any]]) -> str:
    canonical = json.dumps({"user_id": user_id, "email": email, "items": items}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(*, idempotency_key: str, fingerprint: str) -> OrderCreation | None:
    existing = get_order_by_idempotency_key(idempotency_key=idempotency_key)
    if existing is None:
        return None
    if existing.request_fingerprint != fingerprint:
        raise IdempotencyKeyReused(existing)
    logger.info("order_create_replayed", order_id=str(existing.id), idempotency_key=idempotency_key)
    return OrderCreation(order=existing, created=False)


def create_order(
    *,
    user_id: str,
    email: str,
    items: list[dict[str, Any]],
    correlation_id: str,
    idempotency_key: str | None = None,
) -> OrderCreation:
    """Create an order, its items, its first timeline entry and its ORDER_CREATED outbox event atomically.

    With an ``idempotency_key`` a repeated request returns the first order; concurrent
    requests with the same key race on the key's unique constraint and all but one
    get the winner's order back.
    """
    fingerprint = request_fingerprint(user_id=user_id, email=email, items=items)
    if idempotency_key:
        replay = _replay(idempotency_key=idempotency_key, fingerprint=fingerprint)
        if replay:
            return replay
    try:
        with transaction.atomic():
            order = Order.objects.create(
                user_id=user_id,
                email=email,
                status=OrderStatus.CREATED,
                total_amount=order_total(items=items),
                correlation_id=correlation_id,
                idempotency_key=idempotency_key or None,
                request_fingerprint=fingerprint,
            )
            OrderItem.objects.bulk_create(OrderItem(order=order, **item) for item in items)
            event = enqueue_event(
                event_type=ORDER_CREATED,
                order=order_snapshot(order=order),
                correlation_id=correlation_id,
                source=EVENT_SOURCE,
            )
            OrderTimelineEntry.objects.create(
                order=order,
                status=order.status,
                event_type=ORDER_CREATED,
                event_id=event.event_id,
                message="Order created",
                created_at=order.created_at,
            )
    except IntegrityError:
        replay = _replay(idempotency_key=idempotency_key, fingerprint=fingerprint) if idempotency_key else None
        if replay is None:
            raise
        return replay
    logger.info(
        "order_created",
        order_id=str(order.id),
        event_id=str(event.event_id),
        user_id=user_id,
        total_amount=str(order.total_amount),
    )
    return OrderCreation(order=order, created=True)
