"""The batch task: the events of one bridge batch, each standing alone."""

from __future__ import annotations

import smtplib
import uuid

import pytest
from celery.exceptions import Retry
from django.core import mail
from django.core.mail.backends.locmem import EmailBackend
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devtools.harness.sample_orders import create_test_order
from events.models import InboxEntry, OutboxEvent
from notifications import services as notification_services
from notifications.models import Notification
from orders import selectors as order_selectors
from orders.models import OrderTimelineEntry
from pipeline.tasks import send_notifications_batch

pytestmark = pytest.mark.django_db

UNREACHABLE = "unreachable@example.com"


class RefusingSomeBackend(EmailBackend):
    """locmem, except that the mail server refuses one recipient."""

    def send_messages(self, messages):
        if any(UNREACHABLE in message.to for message in messages):
            raise smtplib.SMTPRecipientsRefused({UNREACHABLE: (550, b"no such user")})
        return super().send_messages(messages)


@pytest.fixture
def refusing_mail(settings):
    settings.EMAIL_BACKEND = f"{__name__}.RefusingSomeBackend"


def created_event(email: str, tag: str) -> dict:
    order = create_test_order(user_id=f"batch_{tag}", email=email, correlation_id=f"corr-{tag}")
    return OutboxEvent.objects.get(key=str(order.id), event_type="ORDER_CREATED").payload


def test_every_event_of_the_batch_is_sent_once(refusing_mail):
    events = [created_event(f"user{n}@example.com", str(n)) for n in range(3)]

    send_notifications_batch.apply(args=(events,)).get()

    assert sorted(message.to[0] for message in mail.outbox) == [f"user{n}@example.com" for n in range(3)]
    assert Notification.objects.filter(status="SENT").count() == 3
    assert OutboxEvent.objects.filter(event_type="NOTIFICATION_SENT").count() == 3


def test_a_failing_event_does_not_hold_up_the_others_and_alone_is_retried(refusing_mail):
    good = created_event("good@example.com", "good")
    bad = created_event(UNREACHABLE, "bad")

    send_notifications_batch.apply(args=([bad, good],)).get()

    assert [message.to[0] for message in mail.outbox] == ["good@example.com"]
    sent = Notification.objects.get(order_id=good["order"]["id"])
    assert sent.status == "SENT"
    # Retried until the task's last retry, then recorded as failed and sent to dlq, with the reason.
    failed = Notification.objects.get(order_id=bad["order"]["id"])
    assert failed.status == "FAILED" and "no such user" in failed.error
    dead = OutboxEvent.objects.get(event_type="DEAD_LETTER")
    assert dead.payload["event_id"] == bad["event_id"]
    # The retries carried the failed event only: the good one was never looked at again.
    assert InboxEntry.objects.get(event_id=good["event_id"]).redeliveries == 0


@pytest.mark.django_db(transaction=True)
def test_an_event_that_cannot_even_be_recorded_does_not_stop_its_batch(refusing_mail):
    # An event about an order this database does not have: its records break the foreign key.
    stranger = {**created_event("stranger@example.com", "stranger"), "event_id": str(uuid.uuid4())}
    stranger["order"] = {**stranger["order"], "id": str(uuid.uuid4())}
    good = created_event("good@example.com", "good")

    send_notifications_batch.apply(args=([stranger, good],)).get()

    assert Notification.objects.get(order_id=good["order"]["id"]).status == "SENT"
    assert not Notification.objects.filter(order_id=stranger["order"]["id"]).exists()


def reads_for_a_batch(size: int, tag: str) -> int:
    events = [created_event(f"{tag}{n}@example.com", f"{tag}{n}") for n in range(size)]
    with CaptureQueriesContext(connection) as queries:
        send_notifications_batch.apply(args=(events,)).get()
    assert Notification.objects.filter(order_id__in=[event["order"]["id"] for event in events]).count() == size
    return sum(1 for query in queries.captured_queries if query["sql"].lstrip().upper().startswith("SELECT"))


def test_a_batch_reads_the_database_once_for_all_its_events():
    assert reads_for_a_batch(6, "six") == reads_for_a_batch(2, "two")


def test_a_batch_the_database_cannot_read_is_retried_whole(monkeypatch, refusing_mail):
    events = [created_event(f"user{n}@example.com", f"away{n}") for n in range(2)]
    retried: list = []

    def database_away(**_kwargs):
        raise OperationalError("the database went away")

    monkeypatch.setattr(notification_services, "brief", database_away)
    monkeypatch.setattr(send_notifications_batch, "retry", lambda args, **_kwargs: retried.append(args) or Retry())

    with pytest.raises(Retry):
        send_notifications_batch.apply(args=(events,), throw=True)
    assert retried == [None]  # the task's own arguments: the whole batch
    assert not mail.outbox


def writes_for_a_batch(size: int, tag: str) -> int:
    events = [created_event(f"{tag}{n}@example.com", f"{tag}{n}") for n in range(size)]
    with CaptureQueriesContext(connection) as queries:
        send_notifications_batch.apply(args=(events,)).get()
    order_ids = [event["order"]["id"] for event in events]
    assert Notification.objects.filter(order_id__in=order_ids, status="SENT").count() == size
    assert OutboxEvent.objects.filter(key__in=order_ids, event_type="NOTIFICATION_SENT").count() == size
    assert InboxEntry.objects.filter(event_id__in=[event["event_id"] for event in events]).count() == size
    return sum(1 for query in queries.captured_queries if query["sql"].lstrip().upper().startswith(("INSERT", "UPDATE")))


def test_a_batch_claims_and_records_its_messages_in_as_many_statements_for_six_events_as_for_two():
    assert writes_for_a_batch(6, "six") == writes_for_a_batch(2, "two")


def test_a_message_another_sender_holds_is_left_to_it_and_the_rest_of_the_batch_is_sent(refusing_mail):
    held, free = created_event("held@example.com", "held"), created_event("free@example.com", "free")
    Notification.objects.create(
        order_id=held["order"]["id"],
        source_event_id=held["event_id"],
        source_event_type="ORDER_CREATED",
        channel="email",
        recipient="held@example.com",
        subject="s",
        body="b",
        status="SENDING",
        claimed_by="worker@elsewhere:7",
        claimed_at=timezone.now(),
    )

    send_notifications_batch.apply(args=([held, free],)).get()

    assert [message.to[0] for message in mail.outbox] == ["free@example.com"]
    assert Notification.objects.get(order_id=held["order"]["id"]).status == "SENDING"
    assert Notification.objects.get(order_id=free["order"]["id"]).status == "SENT"


@pytest.mark.django_db(transaction=True)
def test_a_message_whose_record_fails_is_recorded_failed_and_the_others_of_the_batch_sent(monkeypatch, refusing_mail):
    broken, good = created_event("broken@example.com", "broken"), created_event("good@example.com", "good")
    real_snapshot = order_selectors.order_snapshot

    def snapshot_failing_for_one(*, order, **kwargs):
        if str(order.id) == broken["order"]["id"]:
            raise ValueError("a snapshot this order cannot give")
        return real_snapshot(order=order, **kwargs)

    monkeypatch.setattr(order_selectors, "order_snapshot", snapshot_failing_for_one)

    send_notifications_batch.apply(args=([broken, good],)).get()

    assert Notification.objects.get(order_id=good["order"]["id"]).status == "SENT"
    assert OutboxEvent.objects.filter(key=good["order"]["id"], event_type="NOTIFICATION_SENT").count() == 1
    failed = Notification.objects.get(order_id=broken["order"]["id"])
    assert failed.status == "FAILED" and "cannot give" in failed.error
    assert not OutboxEvent.objects.filter(key=broken["order"]["id"], event_type="NOTIFICATION_SENT").exists()


def test_a_batchs_claims_and_records_name_their_orders_in_the_order_of_the_orders_ids(refusing_mail):
    # Every batch locks orders in the order of their ids; the claims' and the timeline's foreign
    # keys lock the orders they name, so these are written in that order too (else two batches
    # can deadlock).
    created = [created_event(f"user{n}@example.com", f"sorted{n}") for n in range(5)]
    events = sorted(created, key=lambda event: event["order"]["id"], reverse=True)

    send_notifications_batch.apply(args=(events,)).get()

    claims = Notification.objects.filter(order_id__in=[event["order"]["id"] for event in events]).order_by("pk")
    assert [str(claim.order_id) for claim in claims] == sorted(event["order"]["id"] for event in events)
    entries = OrderTimelineEntry.objects.filter(event_type="NOTIFICATION_SENT").order_by("pk")
    assert [str(entry.order_id) for entry in entries] == sorted(event["order"]["id"] for event in events)
