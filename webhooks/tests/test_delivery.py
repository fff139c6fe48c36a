"""Webhook deliveries within one process: recorded with the event, sent signed to real receivers
on loopback, retried on the schedule, verified as a receiver would."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from devtools.harness.bridge import task_args, task_messages
from devtools.harness.webhook_receivers import HOLD, Reply
from events.contract import ORDER_CREATED, ORDER_PROCESSING, Event
from events.models import OutboxEvent
from events.services import republish_event
from messaging.routes import DELIVER_WEBHOOKS, PROCESS_ORDERS, SEND_WEBHOOK
from orders.services import create_order, start_processing
from orders_project.celery import app as celery_app
from pipeline.tasks import deliver_events
from recovery.webhook_deliveries import dispatch_due_deliveries
from webhooks import services
from webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint

pytestmark = pytest.mark.django_db


@pytest.fixture
def webhook_settings(settings):
    """Loopback receivers over http, and a schedule of short delays; ``change`` sets more."""

    def change(**values):
        settings.WEBHOOKS = {**settings.WEBHOOKS, **values}

    change(allow_http=True, allow_loopback=True, retry_schedule=[0.0, 1.0, 100.0, 100.0])
    return change


def order_of(owner=None, *, name: str = "hook"):
    """An order of ``owner`` (an API client; none: made without a token)."""
    item = {"product_id": "p", "product_name": "W", "quantity": 1, "price": Decimal("5.00")}
    return create_order(user_id=name, email=f"{name}@example.com", items=[item], correlation_id=f"c-{name}", owner=owner).order


def delivery_of(order, endpoint=None) -> WebhookDelivery:
    deliveries = WebhookDelivery.objects.filter(order_id=order.id, event_type=ORDER_CREATED)
    return deliveries.get(endpoint=endpoint) if endpoint else deliveries.get()


def test_a_receiver_answering_500_500_200_gets_three_verifiable_attempts_with_one_webhook_id(receiver_of, webhook_settings):
    webhook_settings(retry_schedule=[0.0, 0.0, 0.0])
    receiver = receiver_of([500, 500, 200])
    endpoint = services.create_endpoint(owner=None, url=receiver.url, event_types=["order.created"])
    order = order_of()

    delivery = delivery_of(order)
    assert [services.send_delivery(delivery_id=delivery.pk) for _ in range(3)] == [0.0, 0.0, None]
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("SUCCEEDED", 3)
    assert [attempt.status_code for attempt in delivery.attempt_log.all()] == [500, 500, 200]
    assert {request.headers["webhook-id"] for request in receiver.received} == {str(delivery.event_id)}
    for request in receiver.received:
        payload = Webhook(endpoint.secret).verify(request.body, request.headers)
        assert (payload["type"], payload["data"]["order_id"]) == ("order.created", str(order.id))
        assert request.path == "/hooks"
    assert json.loads(receiver.received[0].body) == json.loads(delivery.body)
    # A fourth send of a delivery that landed sends nothing.
    assert services.send_delivery(delivery_id=delivery.pk) is None
    assert len(receiver.received) == 3


def test_410_disables_the_endpoint_at_once_and_its_later_deliveries_fail_unsent(receiver_of, webhook_settings):
    receiver = receiver_of([410])
    endpoint = services.create_endpoint(owner=None, url=receiver.url, event_types=[])
    first, second = delivery_of(order_of(name="a")), delivery_of(order_of(name="b"))

    assert services.send_delivery(delivery_id=first.pk) is None
    endpoint.refresh_from_db()
    first.refresh_from_db()
    assert (endpoint.enabled, endpoint.disabled_reason) == (False, "the receiver answered 410 Gone")
    assert (first.status, first.attempts, first.last_status_code) == ("FAILED", 1, 410)

    assert services.send_delivery(delivery_id=second.pk) is None
    second.refresh_from_db()
    assert second.status == "FAILED"
    assert second.last_error == "endpoint disabled: the receiver answered 410 Gone"
    assert [(a.status_code, a.error) for a in second.attempt_log.all()] == [(None, second.last_error)]
    assert len(receiver.received) == 1
    # A disabled endpoint is given no new deliveries.
    later = order_of(name="c")
    assert not WebhookDelivery.objects.filter(order_id=later.id).exists()


def _http_date(seconds_ahead: float) -> str:
    return email.utils.format_datetime(timezone.now() + dt.timedelta(seconds=seconds_ahead), usegmt=True)


@pytest.mark.parametrize(
    "status, retry_after, low, high",
    [
        (429, "7", 7, 7),
        (503, "7", 7, 7),
        (503, "date:60", 50, 60),  # an HTTP date 60 s ahead
        (429, "1000", 100, 100),  # never beyond the schedule's longest delay
        (429, "0", 1, 1),  # never sooner than the schedule's
        (429, None, 1, 1),
        (500, "7", 1, 1),  # honoured on 429 and 503 only
    ],
)
def test_retry_after_on_429_and_503_delays_the_next_attempt(receiver_of, webhook_settings, status, retry_after, low, high):
    if retry_after and retry_after.startswith("date:"):
        retry_after = _http_date(float(retry_after[5:]))
    receiver = receiver_of([Reply(status, (("Retry-After", retry_after),) if retry_after else ())])
    services.create_endpoint(owner=None, url=receiver.url, event_types=[])
    delivery = delivery_of(order_of())

    countdown = services.send_delivery(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    attempt = delivery.attempt_log.get()
    delay = (delivery.next_attempt_at - attempt.started_at).total_seconds()
    assert (delivery.status, attempt.status_code) == ("PENDING", status)
    assert low <= delay <= high
    # Held by a countdown of the task when due soon; the reconciler's when later.
    assert countdown == (delay if delay <= services.COUNTDOWN_LIMIT else None)
    assert (delivery.dispatched_at is not None) == (countdown is not None)


def test_a_receiver_that_never_answers_times_out_and_the_timeout_is_the_attempts_error(receiver_of, webhook_settings):
    webhook_settings(timeout=0.5)
    receiver = receiver_of(then=HOLD)
    services.create_endpoint(owner=None, url=receiver.url, event_types=[])
    delivery = delivery_of(order_of())

    assert services.send_delivery(delivery_id=delivery.pk) == 1.0
    delivery.refresh_from_db()
    attempt = delivery.attempt_log.get()
    assert attempt.status_code is None
    assert attempt.error.startswith("ReadTimeoutError") and "Read timed out" in attempt.error
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("PENDING", 1, attempt.error)
    assert receiver.held == 1


def test_after_a_rotation_deliveries_verify_with_either_secret_until_the_grace_ends(receiver_of, webhook_settings):
    receiver = receiver_of()
    endpoint = services.create_endpoint(owner=None, url=receiver.url, event_types=[])
    old = endpoint.secret
    services.rotate_secret(endpoint=endpoint)
    new = endpoint.secret
    assert new != old and new.startswith("whsec_")
    assert endpoint.previous_secret_expires_at - timezone.now() > dt.timedelta(hours=23)

    services.send_delivery(delivery_id=delivery_of(order_of(name="during")).pk)
    during = receiver.received[-1]
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(during.body, during.headers)

    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(previous_secret_expires_at=timezone.now() - dt.timedelta(seconds=1))
    services.send_delivery(delivery_id=delivery_of(order_of(name="after")).pk)
    after = receiver.received[-1]
    Webhook(new).verify(after.body, after.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(after.body, after.headers)


def test_an_endpoint_failing_for_disable_after_days_is_disabled_and_a_success_clears_the_streak(receiver_of, webhook_settings):
    webhook_settings(disable_after_days=5.0)
    receiver = receiver_of([500, 200], then=500)
    endpoint = services.create_endpoint(owner=None, url=receiver.url, event_types=[])
    delivery = delivery_of(order_of(name="a"))

    services.send_delivery(delivery_id=delivery.pk)
    endpoint.refresh_from_db()
    assert endpoint.failing_since == delivery.attempt_log.get().started_at
    services.send_delivery(delivery_id=delivery.pk)
    endpoint.refresh_from_db()
    assert endpoint.failing_since is None

    delivery = delivery_of(order_of(name="b"))
    services.send_delivery(delivery_id=delivery.pk)
    endpoint.refresh_from_db()
    assert endpoint.enabled and endpoint.failing_since is not None
    # Every attempt since has failed, for a little less than five days, then for five.
    for days_ago, enabled in ((dt.timedelta(days=5) - dt.timedelta(minutes=10), True), (dt.timedelta(days=5), False)):
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(failing_since=timezone.now() - days_ago)
        services.send_delivery(delivery_id=delivery.pk)
        endpoint.refresh_from_db()
        assert endpoint.enabled is enabled
    assert endpoint.disabled_reason == "every attempt failed for 5 days"
    # Its delivery fails at its next attempt, unsent.
    sent = len(receiver.received)
    services.send_delivery(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.last_error) == ("FAILED", "endpoint disabled: every attempt failed for 5 days")
    assert len(receiver.received) == sent


def test_the_body_of_an_order_of_100_items_stays_under_20_kb(receiver_of, webhook_settings):
    receiver = receiver_of()
    endpoint = services.create_endpoint(owner=None, url=receiver.url, event_types=[])
    items = [
        {"product_id": f"{index:064d}", "product_name": "n" * 200, "quantity": 10000, "price": Decimal("999999.99")}
        for index in range(100)
    ]
    order = create_order(user_id="u" * 64, email=f"{'e' * 64}@example.com", items=items, correlation_id="c").order

    services.send_delivery(delivery_id=delivery_of(order).pk)
    request = receiver.wait_for(1)[0]
    assert len(request.body) < 20_000
    data = Webhook(endpoint.secret).verify(request.body, request.headers)["data"]
    assert (data["order_id"], data["status"], Decimal(data["total_amount"])) == (str(order.id), "CREATED", order.total_amount)


def test_a_delivery_for_each_subscribed_endpoint_of_the_orders_client_only_and_never_twice(receiver_of, webhook_settings):
    alice, bob = (get_user_model().objects.create_user(username=name) for name in ("alice", "bob"))
    every, processing, bobs, disabled = (receiver_of() for _ in range(4))
    endpoints = {
        "every": services.create_endpoint(owner=alice, url=every.url, event_types=[]),
        "processing": services.create_endpoint(owner=alice, url=processing.url, event_types=["order.processing"]),
        "bobs": services.create_endpoint(owner=bob, url=bobs.url, event_types=[]),
        "disabled": services.create_endpoint(owner=alice, url=disabled.url, event_types=[]),
    }
    services.update_endpoint(endpoint=endpoints["disabled"], enabled=False)
    names = {endpoint.pk: name for name, endpoint in endpoints.items()}

    order = order_of(alice, name="alice")
    created = OutboxEvent.objects.get(key=str(order.id), event_type=ORDER_CREATED)
    assert start_processing(order_id=order.id, event_id=created.event_id, source="test")
    deliveries = WebhookDelivery.objects.filter(order_id=order.id)
    assert sorted((names[d.endpoint_id], d.event_type) for d in deliveries) == [
        ("every", ORDER_CREATED),
        ("every", ORDER_PROCESSING),
        ("processing", ORDER_PROCESSING),
    ]
    for delivery in deliveries:
        services.send_delivery(delivery_id=delivery.pk)
    assert [len(r.received) for r in (every, processing, bobs, disabled)] == [2, 1, 0, 0]

    # The event published again (a re-drive) and recorded again: nothing more to send.
    republish_event(event=Event(created.payload))
    services.record_deliveries(event=created)
    assert deliveries.count() == 3
    assert services.pending_deliveries(event_ids=[str(created.event_id)]) == []
    # An order made without a client goes to the endpoints registered without one (none here).
    assert not WebhookDelivery.objects.filter(order_id=order_of(name="anonymous").id).exists()


def test_redirects_are_not_followed(receiver_of, webhook_settings):
    elsewhere = receiver_of()
    redirecting = receiver_of([Reply(302, (("Location", elsewhere.url),))])
    services.create_endpoint(owner=None, url=redirecting.url, event_types=[])
    delivery = delivery_of(order_of())

    services.send_delivery(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.last_status_code) == ("PENDING", 302)
    assert len(redirecting.received) == 1
    assert elsewhere.received == []


def test_due_deliveries_are_those_no_task_holds(receiver_of, webhook_settings):
    webhook_settings(redispatch_after=120.0, retry_schedule=[0.0, 5.0, 300.0])
    receiver = receiver_of([500, 500], then=200)
    services.create_endpoint(owner=None, url=receiver.url, event_types=["order.created"])
    first, second, third = (delivery_of(order_of(name=name)) for name in "abc")
    ids = [str(d.pk) for d in (first, second, third)]
    now = timezone.now()

    # Just recorded: the bridge's task is about to take them.
    assert services.due_deliveries(now=now, limit=10) == []
    # No task came for them: due, oldest first, as many as asked, each handed out once.
    later = third.next_attempt_at
    assert services.due_deliveries(now=later, limit=2) == ids[:2]
    assert services.due_deliveries(now=later, limit=10) == ids[2:]
    assert services.due_deliveries(now=later, limit=10) == []
    # Nor did the tasks they were handed to send them: due again once ``redispatch_after`` passed.
    again = later + dt.timedelta(seconds=121)
    assert services.due_deliveries(now=again, limit=10) == ids

    # A retry due within the countdown limit is held by the task's countdown; a later one is the reconciler's.
    assert services.send_delivery(delivery_id=first.pk) == 5.0
    first.refresh_from_db()
    assert services.due_deliveries(now=first.next_attempt_at, limit=10) == []
    assert services.send_delivery(delivery_id=first.pk) is None
    first.refresh_from_db()
    assert first.dispatched_at is None
    assert services.due_deliveries(now=first.next_attempt_at - dt.timedelta(seconds=1), limit=10) == []
    assert services.due_deliveries(now=first.next_attempt_at, limit=10) == [str(first.pk)]
    # Sent for good: never due again.
    services.send_delivery(delivery_id=first.pk)
    far = timezone.now() + dt.timedelta(days=30)
    assert str(first.pk) not in services.due_deliveries(now=far, limit=10)

    # The bridge's hand-out holds one too.
    fourth = delivery_of(order_of(name="d"))
    assert services.pending_deliveries(event_ids=[str(fourth.event_id)]) == [str(fourth.pk)]
    assert services.due_deliveries(now=fourth.next_attempt_at, limit=10) == []


def test_the_reconciler_hands_due_deliveries_to_send_tasks_on_the_webhooks_queue(own_celery, receiver_of, webhook_settings, settings):
    receiver = receiver_of()
    services.create_endpoint(owner=None, url=receiver.url, event_types=["order.created"])
    deliveries = [delivery_of(order_of(name=name)) for name in "ab"]

    assert dispatch_due_deliveries(now=deliveries[-1].next_attempt_at, limit=10) == 2
    messages = task_messages(own_celery)
    assert sorted((m.headers["task"], *task_args(m)) for m in messages) == sorted((SEND_WEBHOOK, str(d.pk)) for d in deliveries)
    # The service's own app sends webhook tasks to the webhooks queue, and the pipeline's elsewhere.
    router = celery_app.amqp.router
    for name in (SEND_WEBHOOK, DELIVER_WEBHOOKS):
        assert router.route({}, name)["queue"].name == settings.WEBHOOKS["queue"]
    assert router.route({}, PROCESS_ORDERS)["queue"].name == settings.CELERY_TASK_DEFAULT_QUEUE != settings.WEBHOOKS["queue"]


@pytest.mark.django_db(transaction=True)
def test_the_bridge_batchs_deliveries_are_sent_by_its_task_and_a_next_attempt_due_soon_goes_to_a_send_task(
    own_celery, receiver_of, webhook_settings
):
    webhook_settings(retry_schedule=[0.0, 1.0, 100.0])
    # Three deliveries sent side by side: whichever comes first is refused, the others delivered.
    receiver = receiver_of([503])
    services.create_endpoint(owner=None, url=receiver.url, event_types=["order.created"])
    deliveries = [delivery_of(order_of(name=name)) for name in "abc"]

    deliver_events.apply(args=([str(d.event_id) for d in deliveries],)).get()

    statuses = sorted(WebhookDelivery.objects.filter(pk__in=[d.pk for d in deliveries]).values_list("status", "attempts"))
    assert statuses == [("PENDING", 1), ("SUCCEEDED", 1), ("SUCCEEDED", 1)]
    [refused] = WebhookDelivery.objects.filter(pk__in=[d.pk for d in deliveries], status="PENDING")
    # No send task for the delivered ones; the refused one's next attempt, due in 1 s, queued with its countdown.
    [message] = task_messages(own_celery)
    assert (message.headers["task"], task_args(message)) == (SEND_WEBHOOK, [str(refused.pk)])
    assert message.headers["eta"]


@pytest.mark.django_db(transaction=True)
def test_a_bridge_batchs_deliveries_are_read_and_recorded_in_as_many_statements_for_six_as_for_two(
    own_celery, receiver_of, webhook_settings
):
    webhook_settings(concurrency=1)  # every POST in this thread, on the connection the test watches
    receiver = receiver_of()
    services.create_endpoint(owner=None, url=receiver.url, event_types=["order.created"])

    def statements_for(count: int, tag: str) -> int:
        deliveries = [delivery_of(order_of(name=f"{tag}{n}")) for n in range(count)]
        with CaptureQueriesContext(connection) as queries:
            deliver_events.apply(args=([str(d.event_id) for d in deliveries],)).get()
        assert set(WebhookDelivery.objects.filter(pk__in=[d.pk for d in deliveries]).values_list("status", "attempts")) == {
            ("SUCCEEDED", 1)
        }
        assert WebhookAttempt.objects.filter(delivery__in=deliveries, status_code=200).count() == count
        return len(queries.captured_queries)

    assert statements_for(6, "six") == statements_for(2, "two")
    assert not task_messages(own_celery)
