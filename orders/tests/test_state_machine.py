"""The order state machine: allowed transitions, idempotent handlers, parking."""

from __future__ import annotations

import threading
import uuid

import pytest
from django.db import connection, transaction

from devtools.harness.sample_orders import create_test_order
from events.models import InboxEntry, OutboxEvent
from orders import services
from orders.models import Order, OrderStatus
from payments.services import cancel_order

pytestmark = pytest.mark.django_db
SOURCE = "test"


@pytest.fixture
def order() -> Order:
    return create_test_order(user_id="sm", email="sm@example.com", quantity=2, price="5.00", correlation_id="corr-sm")


def created_event_id(order: Order) -> uuid.UUID:
    return OutboxEvent.objects.get(key=str(order.id), event_type="ORDER_CREATED").event_id


@pytest.mark.parametrize(
    "from_status, to_status, allowed",
    [
        ("CREATED", "PROCESSING", True),
        ("CREATED", "FAILED", True),
        ("CREATED", "PAID", False),
        ("PROCESSING", "PAID", True),
        ("PROCESSING", "PAYMENT_FAILED", True),
        ("PROCESSING", "CREATED", False),
        ("PAID", "PAYMENT_FAILED", False),
        ("PAYMENT_FAILED", "PAID", False),
        ("PAYMENT_FAILED", "PROCESSING", True),  # payment retry
        ("FAILED", "PROCESSING", True),  # resumed after a re-publish
        ("CREATED", "CANCELLED", True),
        ("PAYMENT_FAILED", "CANCELLED", True),
        ("FAILED", "CANCELLED", True),
        ("PROCESSING", "CANCELLED", True),
        ("PROCESSING", "CANCELLING", True),
        ("PAID", "CANCELLING", True),
        ("CANCELLING", "CANCELLED", True),
        ("PAID", "PARTIALLY_REFUNDED", True),
        ("PARTIALLY_REFUNDED", "REFUNDED", True),
        ("REFUNDED", "CANCELLING", False),
        ("CANCELLED", "CANCELLING", False),
        ("PAID", "CANCELLED", False),
        ("CANCELLED", "PROCESSING", False),
        ("CANCELLED", "CREATED", False),
    ],
)
def test_transitions(from_status, to_status, allowed):
    assert services.can_transition(from_status=from_status, to_status=to_status) is allowed


def test_start_processing_moves_to_processing_with_event_and_timeline(order):
    assert services.start_processing(order_id=order.id, event_id=created_event_id(order), source=SOURCE)

    order.refresh_from_db()
    assert order.status == OrderStatus.PROCESSING
    event = OutboxEvent.objects.get(key=str(order.id), event_type="ORDER_PROCESSING")
    assert event.payload["order"]["status"] == "PROCESSING"
    assert event.payload["metadata"]["correlation_id"] == "corr-sm"
    assert list(order.timeline.values_list("event_type", "status", "event_id")) == [
        ("ORDER_CREATED", "CREATED", created_event_id(order)),
        ("ORDER_PROCESSING", "PROCESSING", event.event_id),
    ]


def test_the_same_event_applied_twice_changes_nothing_the_second_time(order):
    event_id = created_event_id(order)
    services.start_processing(order_id=order.id, event_id=event_id, source=SOURCE)
    outbox_before = OutboxEvent.objects.count()

    assert services.start_processing(order_id=order.id, event_id=event_id, source=SOURCE) is False

    assert OutboxEvent.objects.count() == outbox_before
    assert order.timeline.count() == 2
    assert InboxEntry.objects.get(event_id=event_id).redeliveries == 1


def test_payment_outcome_needs_processing(order):
    with pytest.raises(services.InvalidTransition):
        services.record_payment_outcome(order=services.lock_order(order.id), approved=True, message="x", source=SOURCE)
    order.refresh_from_db()
    assert order.status == OrderStatus.CREATED


def test_payment_outcome_records_paid_or_failed(order):
    services.start_processing(order_id=order.id, event_id=created_event_id(order), source=SOURCE)
    services.record_payment_outcome(order=services.lock_order(order.id), approved=False, message="declined", source=SOURCE)

    order.refresh_from_db()
    assert order.status == OrderStatus.PAYMENT_FAILED
    assert OutboxEvent.objects.filter(key=str(order.id), event_type="PAYMENT_FAILED", topic="payments").count() == 1


def test_park_order_writes_failed_status_and_a_dead_letter(order):
    original = OutboxEvent.objects.get(key=str(order.id)).payload

    assert services.park_order(order_id=order.id, reason="gave_up", error="Boom", original_event=original, source=SOURCE)

    order.refresh_from_db()
    assert order.status == OrderStatus.FAILED
    dead_letter = OutboxEvent.objects.get(key=str(order.id), topic="dlq")
    assert dead_letter.payload == original
    assert dead_letter.headers["dlq_reason"] == "gave_up"
    assert dead_letter.headers["dlq_error"] == "Boom"
    assert order.timeline.last().message == "gave_up: Boom"
    # Terminal orders are not parked again.
    assert not services.park_order(order_id=order.id, reason="again", error="x", original_event=original, source=SOURCE)


class BackToTheBackup(Exception):
    """Rolls the test's transaction back to where it began: a restore, in miniature."""


def events_after(order: Order, after_id: int) -> list[tuple[str, uuid.UUID]]:
    return list(OutboxEvent.objects.filter(key=str(order.id), id__gt=after_id).order_by("id").values_list("event_type", "event_id"))


def pay(order: Order) -> None:
    services.start_processing(order_id=order.id, event_id=created_event_id(order), source=SOURCE)
    services.record_payment_outcome(order=services.lock_order(order.id), approved=True, message="paid", source=SOURCE)


def test_events_made_again_after_the_database_went_back_to_a_backup_have_the_ids_they_had(order):
    backup = OutboxEvent.objects.filter(key=str(order.id)).latest("id").id
    with pytest.raises(BackToTheBackup), transaction.atomic():
        pay(order)
        lost = events_after(order, backup)
        raise BackToTheBackup
    assert not events_after(order, backup)

    pay(order)

    # The same ids: consumers, webhook receivers and mail systems (Message-ID) know them for copies.
    assert [event_type for event_type, _ in lost] == ["ORDER_PROCESSING", "ORDER_PAID"]
    assert events_after(order, backup) == lost


def test_another_event_in_the_place_of_one_lost_with_a_restore_has_an_id_of_its_own(order):
    backup = OutboxEvent.objects.filter(key=str(order.id)).latest("id").id
    with pytest.raises(BackToTheBackup), transaction.atomic():
        cancel_order(order_id=order.id, requested_by="customer", source=SOURCE)
        lost = events_after(order, backup)
        raise BackToTheBackup

    pay(order)

    assert [event_type for event_type, _ in lost] == ["ORDER_CANCELLED"]
    assert not {event_id for _, event_id in lost} & {event_id for _, event_id in events_after(order, backup)}


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks are PostgreSQL's; SQLite serialises its writers")
def test_an_order_held_locked_does_not_hold_up_a_transaction_that_writes_a_row_about_it():
    # The row's foreign key is checked when its transaction commits, with a KEY SHARE lock on the
    # order: were orders locked FOR UPDATE, that check would wait on the holder (and two batches
    # writing about each other's orders deadlock).
    order = create_test_order(user_id="held", email="held@example.com", correlation_id="corr-held")
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic():
                services.lock_order(order.id)
                locked.set()
                release.wait(30)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(30)
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '5s'")
            services.record_order_event(order_id=order.id, status=order.status, event_type="NOTE", event_id=None, message="while held")
    finally:
        release.set()
        holder.join()
    assert order.timeline.filter(event_type="NOTE").exists()
