"""The reconciler and the cancel/refund work, against the real database: a refund whose event was
lost is re-driven within its deadlines (late, not lost, while ahead of the bridge: test_settling.py)
and given up after the last re-drive; an order being
cancelled is re-driven for its charge under way, never for its refunds by the stuck path; the
customer's cancelled and refunded notifications are re-driven when lost."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from prometheus_client import REGISTRY

from events.contract import Event
from events.models import OutboxEvent
from notifications import services as notification_services
from notifications.models import Notification, NotificationStatus
from orders import services as order_services
from orders.models import Order, OrderStatus
from payments import services as payment_services
from payments.gateway import GatewayTimeout
from payments.models import Payment, Refund, RefundStatus, SimulatedCharge, SimulatedRefund
from payments.simulator import SimulatedGateway
from recovery.models import Redrive, RedriveReason
from recovery.redrives import CANCELLING_WAITS, NothingToRedrive, RedriveOutcome, redrive_now
from recovery.tests.support import (
    APPROVE,
    NO_REFUND_FAULTS,
    ONE_REDRIVE,
    POLICY,
    age,
    created_event,
    new_order,
    publish_all,
    reconcile,
    re_drive_up_to_the_limit,
    settle,
)

pytestmark = pytest.mark.django_db


def notify(order: Order, event_type: str) -> None:
    """What the bridge's notification task does with the order's events of ``event_type``."""
    for event in OutboxEvent.objects.filter(key=str(order.id), event_type=event_type):
        notification_services.send_event_notifications(event=Event(event.payload))


def events_of(order: Order, event_type: str) -> list[OutboxEvent]:
    return list(OutboxEvent.objects.filter(key=str(order.id), event_type=event_type).order_by("id"))


def refund_paid_order(order: Order, *, amount: str | None = None) -> OutboxEvent:
    """A refund of the paid ``order`` asked for by its client; its REFUND_REQUESTED event."""
    payment_services.request_refund(
        order_id=order.id, requested_by="client 1", amount=Decimal(amount) if amount else None, source="test"
    )
    return events_of(order, "REFUND_REQUESTED")[-1]


def make_refund(event: OutboxEvent, gateway: SimulatedGateway = APPROVE) -> Refund | None:
    """What the refund_payment task does with a (re-driven) REFUND_REQUESTED."""
    envelope = Event(event.payload)
    return payment_services.refund_payment(
        order_id=envelope.order_id, event_id=envelope.event_id, refund_id=envelope.refund["id"], source="test", gateway=gateway
    )


def assert_settled(order: Order, *, policy=POLICY) -> None:
    """Once every handler applied the order's events, a pass past the deadline re-drives nothing
    and finds them complete (what it writes itself, dead letters and announcements, aside)."""
    publish_all()
    age(seconds=policy.event_deadline + 1)
    assert reconcile(policy).orders == {}
    assert not OutboxEvent.objects.filter(key=str(order.id), completed_at__isnull=True).exclude(
        event_type__in=["DEAD_LETTER", "NOTIFICATION_SENT"]
    ).exists()


def counted(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_refund_whose_event_was_lost_is_re_driven_after_the_event_deadline_then_made_once():
    order = settle(new_order())
    requested = refund_paid_order(order, amount="0.40")
    publish_all()
    age(seconds=44)
    assert not reconcile().orders  # within the event deadline: the bridge may still hand it on

    age(seconds=2)
    assert reconcile().orders == {RedriveOutcome.REDRIVEN: 1}

    redrive = Redrive.objects.get(order=order)
    assert (redrive.event_id, redrive.event_type, redrive.reason) == (
        requested.event_id,
        "REFUND_REQUESTED",
        RedriveReason.EVENT_NOT_HANDLED,
    )
    copy = OutboxEvent.objects.get(event_id=requested.event_id, published_at__isnull=True)
    assert copy.payload == requested.payload
    # The re-driven copy and the original, both reaching the refund step: one refund at the gateway.
    assert make_refund(copy).status == RefundStatus.SUCCEEDED
    assert make_refund(requested) is None
    assert SimulatedRefund.objects.get().amount == Decimal("0.40")
    order.refresh_from_db()
    assert order.status == OrderStatus.PARTIALLY_REFUNDED
    notify(order, "ORDER_REFUNDED")
    assert_settled(order)


def test_a_refund_not_made_after_the_last_re_drive_is_failed_with_a_dead_letter_and_can_be_retried(
    django_capture_on_commit_callbacks,
):
    order = settle(new_order())
    requested = refund_paid_order(order, amount="0.40")
    policy = ONE_REDRIVE
    re_drive_up_to_the_limit()
    gave_up, notifications_given_up = counted("refunds_total", outcome="gave_up"), counted("reconciler_notifications_given_up_total")

    with django_capture_on_commit_callbacks(execute=True):
        assert reconcile(policy).orders == {RedriveOutcome.GIVEN_UP: 1}

    refund = Refund.objects.get()
    assert refund.status == RefundStatus.FAILED
    assert refund.failure_reason == "redrive_limit: not handled after 1 re-drives"
    assert Payment.objects.get().refund_reserved == 0  # released: the charge can be refunded again
    (failed,) = events_of(order, "REFUND_FAILED")
    assert Event(failed.payload).refund["id"] == str(refund.id)
    dead_letter = OutboxEvent.objects.get(key=str(order.id), event_type="DEAD_LETTER")
    assert dead_letter.headers["dlq_reason"] == "redrive_limit"
    assert dead_letter.payload["event_id"] == str(requested.event_id)
    assert counted("refunds_total", outcome="gave_up") == gave_up + 1
    # A refund is not a notification: that alert stays quiet.
    assert counted("reconciler_notifications_given_up_total") == notifications_given_up
    order.refresh_from_db()
    assert order.status == OrderStatus.PAID
    # REFUND_FAILED needs no handler, and the given-up event is settled: nothing more to re-drive.
    assert_settled(order, policy=policy)

    # An operator retries it: a new event, re-driven on its own budget should it be lost too.
    payment_services.retry_refund(refund_id=refund.id, requested_by="operator ops", source="operator")
    retried = events_of(order, "REFUND_REQUESTED")[-1]
    assert retried.event_id != requested.event_id
    publish_all()
    age(seconds=46)
    assert reconcile(policy).orders == {RedriveOutcome.REDRIVEN: 1}
    assert make_refund(retried).status == RefundStatus.SUCCEEDED
    order.refresh_from_db()
    assert order.status == OrderStatus.PARTIALLY_REFUNDED


def test_a_refund_asked_for_after_the_order_used_its_re_drives_gets_its_own():
    policy = ONE_REDRIVE
    order = new_order()
    publish_all()
    age(seconds=31)
    assert reconcile(policy).orders == {RedriveOutcome.REDRIVEN: 1}  # its one re-drive, while CREATED
    order = settle(order)
    requested = refund_paid_order(order)
    publish_all()
    age(seconds=46)

    assert reconcile(policy).orders == {RedriveOutcome.REDRIVEN: 1}

    assert Redrive.objects.filter(order=order, event_id=requested.event_id).count() == 1
    assert Refund.objects.get().status == RefundStatus.REQUESTED


def test_a_refund_lost_beside_a_notification_at_its_limit_is_re_driven_while_the_notification_is_given_up():
    order = new_order()
    envelope = created_event(order)
    order_services.start_processing(order_id=order.id, event_id=envelope["event_id"], source="test")
    payment_services.charge_order(order_id=order.id, event_id=envelope["event_id"], source="test", gateway=APPROVE)
    notify(order, "ORDER_CREATED")
    notify(order, "ORDER_PROCESSING")
    (paid_event,) = events_of(order, "ORDER_PAID")  # its notification is lost, and re-driven once
    re_drive_up_to_the_limit()
    requested = refund_paid_order(order)
    publish_all()
    age(seconds=ONE_REDRIVE.event_deadline + 1)

    assert reconcile(ONE_REDRIVE).orders == {RedriveOutcome.REDRIVEN: 1}

    assert Notification.objects.get(source_event_id=paid_event.event_id).status == NotificationStatus.FAILED
    assert Redrive.objects.filter(event_id=requested.event_id).count() == 1
    assert Refund.objects.get().status == RefundStatus.REQUESTED


def test_a_lost_cancelled_notification_is_re_driven():
    order = new_order()
    envelope = created_event(order)
    # The bridge handled ORDER_CREATED after the cancel: nothing more to do for it.
    payment_services.cancel_order(order_id=order.id, requested_by="client 1", source="test")
    assert not order_services.start_processing(order_id=order.id, event_id=envelope["event_id"], source="test")
    notify(order, "ORDER_CREATED")
    (cancelled,) = events_of(order, "ORDER_CANCELLED")
    publish_all()
    age(seconds=46)

    assert reconcile().orders == {RedriveOutcome.REDRIVEN: 1}

    assert Redrive.objects.get(order=order).event_id == cancelled.event_id
    notify(order, "ORDER_CANCELLED")
    assert_settled(order)


def test_a_lost_refunded_notification_of_a_refunded_order_is_re_driven():
    order = settle(new_order())
    make_refund(refund_paid_order(order))
    order.refresh_from_db()
    assert order.status == OrderStatus.REFUNDED
    (refunded,) = events_of(order, "ORDER_REFUNDED")
    publish_all()
    age(seconds=46)

    assert reconcile().orders == {RedriveOutcome.REDRIVEN: 1}

    assert Redrive.objects.get(order=order).event_id == refunded.event_id


@pytest.mark.parametrize("approved", [True, False])
def test_an_order_cancelled_during_a_lost_charge_is_re_driven_and_the_charges_outcome_ends_it(approved):
    order = new_order()
    envelope = created_event(order)
    order_services.start_processing(order_id=order.id, event_id=envelope["event_id"], source="test")
    # The gateway decided the charge, but its answer never came: the worker's retries were lost.
    lost_answer = SimulatedGateway(success_rate=1.0 if approved else 0.0, timeout_rate=1.0, seed="recovery", **NO_REFUND_FAULTS)
    with pytest.raises(GatewayTimeout):
        payment_services.charge_order(order_id=order.id, event_id=envelope["event_id"], source="test", gateway=lost_answer)
    notify(order, "ORDER_CREATED")
    notify(order, "ORDER_PROCESSING")
    assert payment_services.cancel_order(order_id=order.id, requested_by="client 1", source="test").cancellation.answered_status == OrderStatus.CANCELLING
    publish_all()
    age(seconds=44)
    assert reconcile().orders == {}

    age(seconds=2)
    assert reconcile().orders == {RedriveOutcome.REDRIVEN: 1}

    redrive = Redrive.objects.get(order=order)
    assert (redrive.event_type, redrive.reason) == ("ORDER_CREATED", RedriveReason.STUCK_CANCELLING)
    # The re-driven ORDER_CREATED reaches the chain: processing skips, the charge finishes under its key.
    assert not order_services.start_processing(order_id=order.id, event_id=envelope["event_id"], source="test")
    payment_services.charge_order(order_id=order.id, event_id=envelope["event_id"], source="test", gateway=APPROVE)
    for requested in events_of(order, "REFUND_REQUESTED"):
        make_refund(requested)

    order.refresh_from_db()
    assert order.status == OrderStatus.CANCELLED
    assert SimulatedCharge.objects.get().calls == 2  # one charge, asked for twice
    payment = Payment.objects.get()
    assert payment.refunded_amount == (payment.amount if approved else 0)
    assert SimulatedRefund.objects.filter(approved=True).count() == (1 if approved else 0)


def test_an_order_cancelling_with_only_refunds_left_is_not_re_driven_as_stuck_but_its_lost_refund_is():
    order = settle(new_order())
    payment_services.cancel_order(order_id=order.id, requested_by="client 1", source="test")
    (requested,) = events_of(order, "REFUND_REQUESTED")
    publish_all()
    age(seconds=46)

    # Past its deadline, but the stuck path has no charge of it to re-drive; the settling path
    # re-drives its refund.
    assert reconcile().orders == {RedriveOutcome.SKIPPED: 1, RedriveOutcome.REDRIVEN: 1}

    redrive = Redrive.objects.get(order=order)
    assert (redrive.event_id, redrive.reason) == (requested.event_id, RedriveReason.EVENT_NOT_HANDLED)
    assert not Redrive.objects.filter(reason=RedriveReason.STUCK_CANCELLING).exists()
    make_refund(requested)
    order.refresh_from_db()
    assert order.status == OrderStatus.CANCELLED


def test_an_order_cancelling_whose_refund_failed_waits_for_an_operator():
    order = settle(new_order())
    payment_services.cancel_order(order_id=order.id, requested_by="client 1", source="test")
    # The gateway refuses the refund: no charge of that reference in its ledger.
    Payment.objects.update(gateway_reference="sim_unknown")
    assert make_refund(events_of(order, "REFUND_REQUESTED")[0]).status == RefundStatus.FAILED
    publish_all()
    age(seconds=600)

    assert set(reconcile().orders) <= {RedriveOutcome.SKIPPED}

    assert not Redrive.objects.exists()
    order.refresh_from_db()
    assert order.status == OrderStatus.CANCELLING
    with pytest.raises(NothingToRedrive, match=re.escape(CANCELLING_WAITS)):
        redrive_now(order_id=order.id, requested_by="admin:ops")
