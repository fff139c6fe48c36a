"""A notification is claimed, sent outside any transaction, then recorded: a real SMTP server
that takes its time shows no database lock held meanwhile, every email arriving once, and a
claim whose sender died taken over once."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from django.conf import settings as django_settings
from django.core import mail
from django.db import connection, transaction
from django.utils import timezone
from prometheus_client import REGISTRY

from devtools.harness.process_group import ProcessGroup
from devtools.harness.sample_orders import create_test_order
from devtools.harness.waiting import wait_until
from devtools.smtp import SlowSmtpServer
from events.contract import Event
from events.models import InboxEntry, OutboxEvent
from notifications import services
from notifications.models import Notification
from orders.models import Order
from recovery.tests.support import reconcile


@pytest.fixture
def smtp_server(settings):
    """Starts a real SMTP server taking ``delay`` s per message, where this process's email goes."""
    servers = []

    def start(*, delay: float) -> SlowSmtpServer:
        server = SlowSmtpServer(delay=delay).start()
        servers.append(server)
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", server.port
        settings.EMAIL_USE_TLS = False
        return server

    yield start
    for server in servers:
        server.stop()


def order_created(tag: str) -> Event:
    order = create_test_order(user_id=f"claim_{tag}", email=f"{tag}@example.com", correlation_id=f"corr-{tag}")
    return Event(OutboxEvent.objects.get(key=str(order.id), event_type="ORDER_CREATED").payload)


def message_id(event_id) -> str:
    return f"<{event_id}.email@{django_settings.SERVICE_NAME}>"


def takeovers_counted() -> float:
    return REGISTRY.get_sample_value("notification_claims_taken_over_total", {"channel": "email"}) or 0.0


def write_claim(event: Event, *, claimed_by: str, claimed_at: dt.datetime) -> Notification:
    """The claim a sender commits before it sends; the tests' senders never get further."""
    told = services.announcement(event=event, briefing=services.brief(events=[event]))
    message = services.compose(announcement=told, channel="email")
    return Notification.objects.create(
        order_id=event.order_id,
        source_event_id=event.event_id,
        source_event_type=event.type,
        channel="email",
        recipient=message.recipient,
        subject=message.subject,
        body=message.body,
        status="SENDING",
        claimed_by=claimed_by,
        claimed_at=claimed_at,
    )


@pytest.mark.django_db(transaction=True)
def test_while_a_mail_server_takes_its_time_the_database_takes_other_writes_at_once(smtp_server):
    slow_smtp = smtp_server(delay=2.0)
    event = order_created("slow")
    outcome: list = []

    def send() -> None:
        try:
            outcome.append(services.send_event_notifications(event=event))
        finally:
            connection.close()

    sender = threading.Thread(target=send)
    sender.start()
    assert slow_smtp.receiving.wait(timeout=30), "the message never reached the mail server"

    started = time.monotonic()
    with transaction.atomic():
        # The claim is committed and no transaction holds its row (PostgreSQL: the lock is free);
        # on SQLite the write lock is free: this transaction writes and commits.
        claim = Notification.objects.select_for_update(nowait=True).get(source_event_id=event.event_id)
        other = create_test_order(user_id="meanwhile", email="meanwhile@example.com", correlation_id="corr-meanwhile")
        Order.objects.filter(pk=claim.order_id).update(updated_at=timezone.now())
    waited = time.monotonic() - started
    # Committed while the mail server still held the message, before the sender could record it.
    assert not slow_smtp.messages
    assert claim.status == "SENDING" and claim.claimed_by.startswith("worker@")
    assert waited < slow_smtp.delay / 2, f"the write waited {waited:.2f} s"

    sender.join(timeout=30)
    assert outcome == [["email"]]
    assert slow_smtp.message_ids() == {message_id(event.event_id): 1}
    assert Notification.objects.get(source_event_id=event.event_id).status == "SENT"
    assert Order.objects.filter(pk=other.pk).exists()


@pytest.mark.django_db
def test_a_claim_whose_sender_died_is_taken_over_by_the_reconciler_and_sent_once_a_fresh_one_is_not(
    smtp_server, admin_client
):
    smtp = smtp_server(delay=0.0)
    takeovers_before = takeovers_counted()
    dead, alive = order_created("dead"), order_created("alive")
    timeout = dt.timedelta(seconds=django_settings.NOTIFICATION["claim_timeout"])
    write_claim(dead, claimed_by="worker@gone:1", claimed_at=timezone.now() - timeout * 2)
    write_claim(alive, claimed_by="worker@busy:2", claimed_at=timezone.now())

    assert reconcile().claims_taken_over == 1
    assert reconcile().claims_taken_over == 0

    assert smtp.message_ids() == {message_id(dead.event_id): 1}
    taken = Notification.objects.get(source_event_id=dead.event_id)
    assert (taken.status, taken.takeovers) == ("SENT", 1) and taken.claimed_by.startswith("reconciler@")
    assert InboxEntry.objects.filter(event_id=dead.event_id, handler="notifications.email").exists()
    assert OutboxEvent.objects.get(event_type="NOTIFICATION_SENT").payload["details"]["source_event_id"] == dead.event_id
    held = Notification.objects.get(source_event_id=alive.event_id)
    assert (held.status, held.takeovers, held.claimed_by) == ("SENDING", 0, "worker@busy:2")
    # Operators see it: counted, and on the notifications' admin page with who took it over.
    assert takeovers_counted() == takeovers_before + 1
    page = admin_client.get("/admin/notifications/notification/").content.decode()
    assert taken.claimed_by in page and "worker@busy:2" in page


@pytest.mark.django_db
def test_a_copy_of_the_event_leaves_a_fresh_claim_to_its_holder_and_takes_a_stale_one_over(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    event = order_created("copy")
    claim = write_claim(event, claimed_by="worker@elsewhere:7", claimed_at=timezone.now())

    assert services.send_event_notifications(event=event) == []
    assert not mail.outbox

    Notification.objects.filter(pk=claim.pk).update(claimed_at=timezone.now() - dt.timedelta(hours=1))
    assert services.send_event_notifications(event=event) == ["email"]
    assert services.send_event_notifications(event=event) == []
    assert [m.extra_headers["Message-ID"] for m in mail.outbox] == [message_id(event.event_id)]
    claim.refresh_from_db()
    assert (claim.status, claim.takeovers) == ("SENT", 1) and claim.claimed_by.startswith("worker@")


@pytest.mark.django_db(transaction=True)
@pytest.mark.e2e
def test_orders_all_finish_through_the_real_worker_and_every_email_arrives_once(smtp_server, kafka_broker, tmp_path):
    slow_smtp = smtp_server(delay=1.0)
    group, port = ProcessGroup.with_web_port(
        kafka_brokers=kafka_broker.bootstrap_servers, work_dir=tmp_path, CELERY_CONCURRENCY="4", **slow_smtp.settings()
    )
    try:
        group.start_system(port=port)
        events = [order_created(f"e2e{n}") for n in range(10)]
        order_ids = [event.order_id for event in events]
        # Each order: ORDER_CREATED, ORDER_PROCESSING and its outcome, one email each.
        slow_smtp.wait_for(30, timeout=120)
        wait_until(
            lambda: Notification.objects.filter(order_id__in=order_ids, status="SENT").count() == 30,
            timeout=30,
            message="the emails were not all recorded",
        )
    finally:
        group.stop_all()

    assert not Order.objects.filter(pk__in=order_ids, status__in=["CREATED", "PROCESSING"]).exists()
    announced = OutboxEvent.objects.filter(key__in=order_ids, event_type__in=services.SUBJECTS)
    assert slow_smtp.message_ids() == {message_id(event_id): 1 for event_id in set(announced.values_list("event_id", flat=True))}
