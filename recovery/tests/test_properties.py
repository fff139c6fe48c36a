"""Property: whatever downstream work is lost, and whenever, the database drives every order to a
terminal state, charged at most once and told each event at most once.

Each example is a random sequence of what the relay, the bridge's handlers, time and the
reconciler may do to one order; any delivery may be lost simply by never happening. Afterwards
the delivery loop runs until nothing is lost any more, as the running system does.
"""

from __future__ import annotations

from collections import Counter

import pytest
from django.core import mail
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from devtools.harness.sample_orders import create_test_order
from events.contract import Event
from events.models import OutboxEvent
from notifications import services as notification_services
from orders import services as order_services
from orders.models import OrderStatus
from payments import services as payment_services
from payments.simulator import SimulatedGateway
from payments.models import Payment, PaymentStatus
from recovery.models import Redrive
from recovery.redrives import NothingToRedrive, redrive_now
from recovery.tests.support import age, default_policy, publish_all, reconcile

POLICY = default_policy(max_redrives=4)
TERMINAL = {OrderStatus.PAID, OrderStatus.PAYMENT_FAILED, OrderStatus.FAILED}


class Bridge:
    """Hands each published outbox row to its handlers at most once, as the consumer group does
    (its offsets move on); a row it loses is never handed on again."""

    def __init__(self, order, gateway: SimulatedGateway):
        self.order = order
        self.gateway = gateway
        self.consumed: set[int] = set()

    def _unconsumed(self) -> list[OutboxEvent]:
        rows = OutboxEvent.objects.filter(key=str(self.order.id), published_at__isnull=False).exclude(pk__in=self.consumed)
        self.consumed.update(row.pk for row in rows)
        return list(rows)

    def deliver(self, *, charge: bool = True) -> None:
        """Every new event to its handlers; ``charge=False``: the chain's charge is lost after processing."""
        for event in self._unconsumed():
            envelope, order_id = event.payload, self.order.id
            if event.event_type == "ORDER_CREATED":
                order_services.start_processing(order_id=order_id, event_id=envelope["event_id"], source="prop")
                if charge:
                    payment_services.charge_order(
                        order_id=order_id, event_id=envelope["event_id"], source="prop", gateway=self.gateway
                    )
            if event.event_type in notification_services.SUBJECTS:
                notification_services.send_event_notifications(event=Event(envelope))

    def lose(self) -> None:
        """Kafka, the Celery broker or a worker lost every event it held."""
        self._unconsumed()


def state(order) -> tuple:
    return (
        OutboxEvent.objects.count(),
        order.timeline.count(),
        Redrive.objects.count(),
        type(order).objects.get(pk=order.pk).status,
    )


def check_invariants(order) -> None:
    assert Payment.objects.filter(order=order, status=PaymentStatus.APPROVED).count() <= 1
    sent = Counter(message.extra_headers["Message-ID"] for message in mail.outbox)
    assert all(count == 1 for count in sent.values()), sent
    statuses = list(order.timeline.exclude(event_type__in=["REDRIVEN", "NOTIFICATION_SENT"]).values_list("status", flat=True))
    assert len(statuses) == len(set(statuses)), statuses
    redrive_moments = set(Redrive.objects.filter(order=order).values_list("created_at", flat=True))
    assert len(redrive_moments) <= POLICY.max_redrives


ACTIONS = st.sampled_from(
    ["publish", "deliver", "deliver_but_lose_the_charge", "lose", "wait_short", "wait_long", "reconcile", "operator_redrive"]
)


@pytest.mark.django_db
@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(actions=st.lists(ACTIONS, max_size=14), approve=st.booleans())
def test_every_order_ends_terminal_whatever_is_lost_and_when(actions, approve):
    mail.outbox = []
    gateway = SimulatedGateway(success_rate=1.0 if approve else 0.0, timeout_rate=0.0, seed="prop")
    order = create_test_order(user_id="prop", email="prop@example.com", correlation_id="prop")
    bridge = Bridge(order, gateway)
    for action in actions:
        if action == "publish":
            publish_all()
        elif action == "deliver":
            bridge.deliver()
        elif action == "deliver_but_lose_the_charge":
            bridge.deliver(charge=False)
        elif action == "lose":
            bridge.lose()
        elif action == "wait_short":
            age(seconds=10)
        elif action == "wait_long":
            age(seconds=90)
        elif action == "reconcile":
            reconcile(POLICY)
        else:
            before = state(order)
            try:
                redrive_now(order_id=order.id, requested_by="prop")
            except NothingToRedrive:
                assert state(order) == before, "a refused re-drive changed something"
        check_invariants(order)

    redrives_used = len(set(Redrive.objects.filter(order=order).values_list("created_at", flat=True)))
    # From here on nothing is lost: the system runs its loop until the order is done.
    for _ in range(12):
        publish_all()
        bridge.deliver()
        age(seconds=POLICY.backoff_max + 1)
        reconcile(POLICY)
        check_invariants(order)
    order.refresh_from_db()
    assert order.status in TERMINAL
    if order.status == OrderStatus.FAILED:
        # Parked only when its last re-drive was spent while things were being lost, with its reason
        # on the dead-letter topic.
        assert redrives_used == POLICY.max_redrives
        assert OutboxEvent.objects.get(key=str(order.id), event_type="DEAD_LETTER").headers["dlq_reason"] == "redrive_limit"
    else:
        assert order.status == (OrderStatus.PAID if approve else OrderStatus.PAYMENT_FAILED)
        assert order.notifications.filter(status="SENT").count() == 3
        assert not OutboxEvent.objects.filter(key=str(order.id), completed_at__isnull=True).exclude(
            event_type="NOTIFICATION_SENT"
        ).exists()
