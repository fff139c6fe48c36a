"""What the reconciler's tests do to the database in place of the relay, the bridge and time."""

from __future__ import annotations

import datetime as dt

from django.db.models import F
from django.utils import timezone

from events.models import OutboxEvent
from orders.models import Order, OrderStatus
from recovery.models import Redrive
from recovery.selectors import RedrivePolicy


def default_policy(*, max_redrives: int) -> RedrivePolicy:
    """The reconciler's default deadlines and backoff, with a smaller limit for short tests."""
    return RedrivePolicy(
        stuck_after={OrderStatus.CREATED: 30.0, OrderStatus.PROCESSING: 45.0},
        event_deadline=45.0,
        max_redrives=max_redrives,
        backoff=15.0,
        backoff_max=60.0,
        max_wait_in_flight=120.0,
    )


def publish_all(*, partition: int | None = None, offset: int | None = None) -> None:
    """What the relay does once Kafka confirmed the rows (put, if given, at ``partition`` and ``offset``)."""
    OutboxEvent.objects.filter(published_at__isnull=True).update(
        published_at=timezone.now(), kafka_partition=partition, kafka_offset=offset
    )


def age(*, seconds: float) -> None:
    """Move every clock of the data ``seconds`` into the past, as if that much time went by."""
    delta = dt.timedelta(seconds=seconds)
    clocks = ((Order, "updated_at"), (OutboxEvent, "created_at"), (OutboxEvent, "published_at"), (Redrive, "created_at"))
    for model, field in clocks:
        model.objects.update(**{field: F(field) - delta})
