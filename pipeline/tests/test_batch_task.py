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

from devtools.harness.sample_orders import create_test_order
from events.models import InboxEntry, OutboxEvent
from notifications import services as notification_services
from notifications.models import Notification
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
