"""The chain of a bridge batch's orders: processed together, charged together, each order's outcome
its own."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext

from devtools.harness.sample_orders import create_test_order
from events.models import InboxEntry, OutboxEvent
from orders import services as order_services
from orders.models import Order, OrderStatus
from payments.gateway import ChargeResult, GatewayTimeout, RefundResult
from payments.models import Payment, PaymentStatus, SimulatedCharge
from pipeline.tasks import charge_payments, process_orders


def created_events(count: int, tag: str) -> list[dict]:
    orders = [create_test_order(user_id=f"{tag}_{n}", email=f"{tag}{n}@example.com", correlation_id=f"{tag}-{n}") for n in range(count)]
    return [OutboxEvent.objects.get(key=str(order.id), event_type="ORDER_CREATED").payload for order in orders]


def status_of(event: dict) -> str:
    return Order.objects.get(pk=event["order"]["id"]).status


@pytest.fixture
def gateway_setting(settings):
    def use(path: str, **knobs) -> None:
        settings.PAYMENTS = {**settings.PAYMENTS, "gateway_class": path, **knobs}

    return use


@pytest.mark.django_db(transaction=True)
def test_the_orders_of_a_batch_are_processed_in_one_transaction_and_charged_once_each():
    events = created_events(4, "batch")

    commits = []
    real_commit = connection.commit

    def counted_commit():
        commits.append(1)
        real_commit()

    with CaptureQueriesContext(connection) as processing, pytest.MonkeyPatch.context() as patch:
        patch.setattr(connection, "commit", counted_commit)
        process_orders.apply(args=(events,)).get()
    charge_payments.apply(args=(events,)).get()

    assert sum(query["sql"].startswith('INSERT INTO "events_outboxevent"') for query in processing.captured_queries) == 1
    assert len(commits) == 1, "one transaction for the four orders"
    for event in events:
        order_id = event["order"]["id"]
        assert status_of(event) in (OrderStatus.PAID, OrderStatus.PAYMENT_FAILED)
        [payment] = Payment.objects.filter(order_id=order_id)
        assert payment.gateway_calls == 1
        expected = PaymentStatus.APPROVED if status_of(event) == OrderStatus.PAID else PaymentStatus.DECLINED
        assert payment.status == expected
        assert SimulatedCharge.objects.filter(idempotency_key=payment.idempotency_key, calls=1).exists()
        assert list(OutboxEvent.objects.filter(key=order_id).values_list("event_type", flat=True).order_by("id")) == [
            "ORDER_CREATED", "ORDER_PROCESSING", "ORDER_PAID" if payment.status == PaymentStatus.APPROVED else "PAYMENT_FAILED",
        ]

    # The batch again (a redelivery): nothing changes, each handler counts it once per order.
    process_orders.apply(args=(events,)).get()
    charge_payments.apply(args=(events,)).get()
    assert Payment.objects.count() == 4 and SimulatedCharge.objects.count() == 4
    assert set(InboxEntry.objects.values_list("redeliveries", flat=True)) == {1}


@pytest.mark.django_db
def test_an_order_whose_processing_fails_is_retried_alone_then_parked_and_the_others_go_on(monkeypatch):
    good, bad, refused = created_events(3, "mixed")
    refused = {**refused, "order": {**refused["order"], "id": "00000000-0000-0000-0000-000000000000"}}
    real_claim = order_services.claim_events

    def claim_failing_for_bad(*, claims):
        if any(str(event_id) == bad["event_id"] for _handler, event_id in claims):
            raise OperationalError("the database went away for this order")
        return real_claim(claims=claims)

    monkeypatch.setattr(order_services, "claim_events", claim_failing_for_bad)

    process_orders.apply(args=([bad, good, refused],), retries=process_orders.max_retries - 2).get()

    assert status_of(good) == OrderStatus.PROCESSING
    # The two retries carried the failing order alone: the good one was never claimed again.
    assert InboxEntry.objects.get(event_id=good["event_id"]).redeliveries == 0
    parked = Order.objects.get(pk=bad["order"]["id"])
    assert parked.status == OrderStatus.FAILED
    assert parked.timeline.get(status=OrderStatus.FAILED).message.startswith("processing_gave_up: OperationalError")
    # The event of no order went to dlq with its reason, and nothing else was written for it.
    dead = OutboxEvent.objects.get(event_type="DEAD_LETTER", payload__event_id=refused["event_id"])
    assert dead.headers["dlq_reason"] == "unknown_order"
    assert not InboxEntry.objects.filter(event_id=refused["event_id"]).exists()


class MeetsItsBatch:
    """A provider whose answers wait until four calls are under way at once: calls made one after
    the other never get an answer (the barrier breaks, the calls fail)."""

    barrier = threading.Barrier(4, timeout=30)

    def charge(self, *, idempotency_key: str, order_id: str, amount: Decimal, currency: str) -> ChargeResult:
        self.barrier.wait()
        return ChargeResult(approved=True, reference=f"met_{idempotency_key}")

    def refund(self, *, idempotency_key: str, charge_reference: str, amount: Decimal) -> RefundResult:
        raise NotImplementedError


class TimesOutForOne:
    """A provider that never answers for the order whose email starts with "slow"."""

    slow: set[str] = set()

    def charge(self, *, idempotency_key: str, order_id: str, amount: Decimal, currency: str) -> ChargeResult:
        if order_id in self.slow:
            raise GatewayTimeout(f"no answer for {idempotency_key}")
        return ChargeResult(approved=True, reference=f"ok_{idempotency_key}")

    def refund(self, *, idempotency_key: str, charge_reference: str, amount: Decimal) -> RefundResult:
        raise NotImplementedError


@pytest.mark.django_db
def test_the_gateway_calls_of_a_batch_run_side_by_side(gateway_setting):
    events = created_events(4, "side")
    process_orders.apply(args=(events,)).get()
    gateway_setting(f"{__name__}.MeetsItsBatch", gateway_concurrency=4)

    charge_payments.apply(args=(events,)).get()

    assert {status_of(event) for event in events} == {OrderStatus.PAID}


@pytest.mark.django_db
def test_a_charge_that_times_out_is_retried_alone_and_the_others_are_recorded(gateway_setting):
    slow, *others = created_events(3, "timeout")
    process_orders.apply(args=([slow, *others],)).get()
    TimesOutForOne.slow = {slow["order"]["id"]}
    gateway_setting(f"{__name__}.TimesOutForOne")

    charge_payments.apply(args=([slow, *others],), retries=charge_payments.max_retries - 2).get()

    assert {status_of(event) for event in others} == {OrderStatus.PAID}
    assert {Payment.objects.get(order_id=event["order"]["id"]).gateway_calls for event in others} == {1}
    parked = Order.objects.get(pk=slow["order"]["id"])
    assert parked.status == OrderStatus.FAILED
    assert parked.timeline.get(status=OrderStatus.FAILED).message.startswith("payment_gave_up: GatewayTimeout")
    # The call and two retries, all under the one key of its pending attempt.
    assert Payment.objects.get(order=parked).gateway_calls == 3


@pytest.mark.django_db
def test_a_batch_is_taken_into_processing_in_as_many_writes_for_six_orders_as_for_two():
    def writes_for(count: int, tag: str) -> int:
        events = created_events(count, tag)
        with CaptureQueriesContext(connection) as queries:
            process_orders.apply(args=(events,)).get()
        assert {status_of(event) for event in events} == {OrderStatus.PROCESSING}
        assert OutboxEvent.objects.filter(key__in=[event["order"]["id"] for event in events], event_type="ORDER_PROCESSING").count() == count
        return sum(1 for query in queries.captured_queries if query["sql"].lstrip().upper().startswith(("INSERT", "UPDATE")))

    assert writes_for(6, "six") == writes_for(2, "two")
