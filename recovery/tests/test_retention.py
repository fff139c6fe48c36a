"""Retention against the real database: old history is deleted in batches, and what an unfinished
or parked order still needs is kept."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.utils import timezone

from events import services as event_services
from events.models import InboxEntry, OutboxEvent
from notifications.models import Notification
from orders import services as order_services
from orders.models import OrderStatus, OrderTimelineEntry
from recovery.dead_letters import republish_dead_letter
from recovery.retention import purge_history
from recovery.tests.support import age, created_event, new_order, publish_all, reconcile, settle

pytestmark = pytest.mark.django_db


def test_history_of_complete_events_is_deleted_after_retention_and_what_is_needed_is_kept():
    finished = [settle(new_order()) for _ in range(3)]
    unfinished = new_order()
    order_services.start_processing(
        order_id=unfinished.id, event_id=created_event(unfinished)["event_id"], source="test"
    )
    publish_all()
    age(seconds=46)
    reconcile()  # marks the finished orders' events complete
    kept_timeline = OrderTimelineEntry.objects.count()
    kept_notifications = Notification.objects.count()
    InboxEntry.objects.update(handled_at=timezone.now() - dt.timedelta(days=8))
    OutboxEvent.objects.filter(completed_at__isnull=False).update(completed_at=timezone.now() - dt.timedelta(days=8))

    result = reconcile()

    finished_keys = [str(order.id) for order in finished]
    assert not OutboxEvent.objects.filter(key__in=finished_keys).exists()
    assert result.purged["outbox"] >= 3 * 6
    # The unfinished order's events and their inbox entries stay: the reconciler may still need them.
    unfinished_events = OutboxEvent.objects.filter(key=str(unfinished.id)).values_list("event_id", flat=True)
    assert set(unfinished_events)
    assert InboxEntry.objects.filter(event_id__in=list(unfinished_events)).exists()
    assert not InboxEntry.objects.exclude(event_id__in=list(unfinished_events)).exists()
    assert OrderTimelineEntry.objects.count() == kept_timeline
    assert Notification.objects.count() == kept_notifications
    assert all(order.payments.exists() for order in finished)


def test_purge_works_in_batches_and_stops_after_its_share_of_the_pass():
    for _ in range(3):
        settle(new_order())
    publish_all()
    OutboxEvent.objects.update(completed_at=timezone.now() - dt.timedelta(days=8))
    total = OutboxEvent.objects.count()

    purged = purge_history(retention=dt.timedelta(days=7), batch_size=4, max_batches=2, now=timezone.now())

    assert purged["outbox"] == 8
    assert OutboxEvent.objects.count() == total - 8


def test_a_parked_order_keeps_its_events_past_the_retention_so_its_dead_letter_can_still_be_republished():
    # Its dead letter is re-published only as the outbox recorded it, and its inbox entries say
    # which handlers must not apply the event again.
    order = new_order()
    envelope = created_event(order)
    order_services.start_processing(order_id=order.id, event_id=envelope["event_id"], source="test")
    order_services.park_order(order_id=order.id, reason="payment_gave_up", error="t", original_event=envelope, source="test")
    publish_all()
    age(seconds=46)
    reconcile()
    OutboxEvent.objects.filter(completed_at__isnull=False).update(completed_at=timezone.now() - dt.timedelta(days=8))
    InboxEntry.objects.update(handled_at=timezone.now() - dt.timedelta(days=8))
    reconcile()

    kept = set(OutboxEvent.objects.filter(key=str(order.id)).values_list("event_type", flat=True))
    assert kept == {"ORDER_CREATED", "ORDER_PROCESSING"}  # the DEAD_LETTER row, complete, is gone
    assert InboxEntry.objects.filter(event_id=envelope["event_id"]).exists()
    dead_letter = event_services.archive_dead_letter(
        key=str(order.id), headers={"dlq_reason": "payment_gave_up", "dlq_original_event_id": envelope["event_id"]},
        value=json.dumps(envelope).encode(),
    )
    republish_dead_letter(dead_letter_id=dead_letter.pk, requested_by="ops")
    order.refresh_from_db()
    assert order.status == OrderStatus.PROCESSING
