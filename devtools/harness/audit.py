"""What happened to the orders the tests posted: the end-to-end tests wait until the pipeline is
done with them; the fault suites (test_faults.py on PostgreSQL and Redis, test_faults_local.py on
the local default) audit every order that got a 201."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from django.db.models import Count

from devtools.harness.waiting import wait_until
from events.models import OutboxEvent
from notifications.models import Notification
from orders.models import Order, OrderStatus
from orders.services import RECORD_PAYMENT, TERMINAL_STATUSES
from payments.models import Payment, SimulatedCharge

# An order the pipeline finished has its payment's outcome. The state machine's other terminal
# statuses (parked, cancelled) are orders a fault kept from finishing.
PAYMENT_OUTCOMES = RECORD_PAYMENT.targets
# Timeline entries that repeat without the order's status repeating: one per notification sent,
# one per re-drive (the reconciler's or an operator's).
REPEATABLE_TIMELINE_ENTRIES = ("NOTIFICATION_SENT", "REDRIVEN")
# The local email backend logs every message it sends (an email_sent line), with a Message-ID
# made from the id of the event the email tells about.
_EMAIL_MESSAGE_ID = re.compile(r'"message_id": "<([0-9a-f-]{36}\.email)@')


def wait_for_completion(order_ids: list[str], *, notifications_per_order: int = 3, timeout: float = 60) -> None:
    """Every order terminal, its notifications recorded and every outbox row published."""

    def done() -> bool:
        finished = Order.objects.filter(pk__in=order_ids, status__in=TERMINAL_STATUSES).count() == len(order_ids)
        notified = Notification.objects.filter(order_id__in=order_ids).count() == notifications_per_order * len(order_ids)
        return finished and notified and not OutboxEvent.objects.filter(published_at__isnull=True).exists()

    wait_until(done, timeout=timeout, interval=0.2, message="orders did not complete")


def email_sends(logs: Iterable[Path]) -> Counter:
    """Emails the workers really sent, by Message-ID, read from the logs their output went to."""
    sends = Counter()
    for log in logs:
        sends.update(_EMAIL_MESSAGE_ID.findall(log.read_text(errors="replace")))
    return sends


def audit(order_ids: list[str], *, logs: Iterable[Path], gateway) -> dict[str, Any]:
    """What happened to the orders that got a 201: missing, unfinished (without a payment
    outcome), short of their 3 notifications, with an outcome other than ``gateway``
    (a SimulatedGateway with the processes' seed) gives for the first attempt, and the duplicates:
    orders charged or approved twice, statuses repeated in a timeline, emails sent twice for one
    event (``logs``: where the workers' output went)."""
    orders = {str(o.id): o for o in Order.objects.filter(pk__in=order_ids)}
    missing = [order_id for order_id in order_ids if order_id not in orders]
    unfinished = [o for o in orders.values() if o.status not in PAYMENT_OUTCOMES]
    wrong_outcome = [
        o
        for o in orders.values()
        if o.status in PAYMENT_OUTCOMES
        and o.status != (OrderStatus.PAID if gateway.would_approve(idempotency_key=f"{o.id}:1") else OrderStatus.PAYMENT_FAILED)
    ]
    notified = dict(
        Notification.objects.filter(order_id__in=order_ids, status="SENT")
        .values_list("order_id")
        .annotate(n=Count("id"))
    )
    unnotified = [o for o in orders.values() if notified.get(o.id, 0) < 3]
    charges = Counter()
    for key in SimulatedCharge.objects.filter(approved=True).values_list("idempotency_key", flat=True):
        charges[key.split(":")[0]] += 1
    double_charged = [order_id for order_id in order_ids if charges[order_id] > 1]
    double_approved = (
        Payment.objects.filter(order_id__in=order_ids, status="APPROVED")
        .values("order_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .count()
    )
    repeated_steps = 0
    for order in orders.values():
        steps = list(order.timeline.exclude(event_type__in=REPEATABLE_TIMELINE_ENTRIES).values_list("status", flat=True))
        repeated_steps += len(steps) - len(set(steps))
    sent = email_sends(logs)
    order_events = {
        str(event_id)
        for event_id in Notification.objects.filter(order_id__in=order_ids).values_list("source_event_id", flat=True)
    }
    resent = sum(count - 1 for message, count in sent.items() if count > 1 and message.split(".")[0] in order_events)
    return {
        "missing": missing,
        "unfinished": unfinished,
        "unnotified": unnotified,
        "wrong_outcome": wrong_outcome,
        "lost": len(missing) + len({o.id for o in unfinished} | {o.id for o in unnotified}),
        "duplicates": len(double_charged) + double_approved + repeated_steps + resent,
        "double_charged": len(double_charged) + double_approved,
        "emails_resent": resent,
        "completed": sum(1 for o in orders.values() if o.status in PAYMENT_OUTCOMES),
    }


def audit_when_complete(order_ids: list[str], *, logs: Iterable[Path], gateway, timeout: float) -> dict[str, Any]:
    """The audit once every order is complete (terminal, notified), or after ``timeout`` seconds."""
    logs = list(logs)

    def complete():
        result = audit(order_ids, logs=logs, gateway=gateway)
        return result if not (result["missing"] or result["unfinished"] or result["unnotified"]) else None

    try:
        return wait_until(complete, timeout=max(1.0, timeout), interval=1.0)
    except TimeoutError:
        return audit(order_ids, logs=logs, gateway=gateway)
