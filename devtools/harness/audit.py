"""What happened to the orders the tests posted: the end-to-end tests wait until the pipeline is
done with them; the fault suites (test_faults.py on PostgreSQL and Redis, test_faults_local.py on
the local default) audit every order that got a 201."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from decimal import Decimal
from typing import Any

from django.db.models import Count, Sum

from devtools.harness.waiting import wait_until
from events.contract import CUSTOMER_EVENTS, ORDER_REFUNDED, REFUND_FAILED, REFUND_REQUESTED
from events.models import OutboxEvent
from notifications.models import Notification
from orders.models import Order, OrderStatus, OrderTimelineEntry
from orders.services import RECORD_PAYMENT, RECORD_REFUND, TERMINAL_STATUSES
from payments.models import Payment, PaymentStatus, Refund, RefundStatus, SimulatedCharge, SimulatedRefund

# An order the pipeline finished has its payment's outcome, or the outcome of what its customer
# asked for after (a cancellation, refunds). Parked orders are orders a fault kept from finishing.
PAYMENT_OUTCOMES = RECORD_PAYMENT.targets
OUTCOMES = PAYMENT_OUTCOMES | RECORD_REFUND.targets | {OrderStatus.CANCELLED}
# Timeline entries that repeat without the order's status repeating: one per notification sent,
# one per re-drive (the reconciler's or an operator's), the events about refunds and a charge
# that ended after its order was cancelled (a refund recorded twice is counted apart).
REPEATABLE_TIMELINE_ENTRIES = (
    "NOTIFICATION_SENT",
    "REDRIVEN",
    REFUND_REQUESTED,
    REFUND_FAILED,
    ORDER_REFUNDED,
    "PAYMENT_AFTER_CANCELLATION",
)
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
    """What happened to the orders that got a 201: missing, unfinished (without an outcome, or with
    a refund still requested), with a customer event not notified, with a charge outcome other
    than ``gateway`` (a SimulatedGateway with the processes' seed) gives for the first attempt,
    the duplicates: orders charged or approved twice, statuses repeated in a timeline, refunds
    recorded twice, emails sent twice for one event beyond a resend of a claim taken over from a
    sender that died (``logs``: where the workers' output went),
    and ``money``: where the gateway's ledger and the orders disagree (``money_audit``)."""
    orders = {str(o.id): o for o in Order.objects.filter(pk__in=order_ids)}
    missing = [order_id for order_id in order_ids if order_id not in orders]
    refunding = {
        str(pk)
        for pk in Refund.objects.filter(order_id__in=order_ids, status=RefundStatus.REQUESTED).values_list("order_id", flat=True)
    }
    unfinished = [o for o in orders.values() if o.status not in OUTCOMES or str(o.id) in refunding]
    wrong_outcome = [
        o
        for o in orders.values()
        if o.status in OUTCOMES - {OrderStatus.CANCELLED}
        and (o.status != OrderStatus.PAYMENT_FAILED) != gateway.would_approve(idempotency_key=f"{o.id}:1")
    ]
    sent = set(
        Notification.objects.filter(order_id__in=order_ids, status="SENT").values_list("source_event_id", flat=True)
    )
    # Each event the customer is to be told of (a status change they care about) was told.
    untold = {
        str(order_id)
        for order_id, event_id in OrderTimelineEntry.objects.filter(
            order_id__in=order_ids, event_type__in=CUSTOMER_EVENTS, event_id__isnull=False
        ).values_list("order_id", "event_id")
        if event_id not in sent
    }
    unnotified = [o for order_id, o in orders.items() if order_id in untold]
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
    succeeded = Counter(
        str(pk) for pk in Refund.objects.filter(order_id__in=order_ids, status=RefundStatus.SUCCEEDED).values_list("order_id", flat=True)
    )
    repeated_steps = refunds_recorded_twice = 0
    for order in orders.values():
        steps = list(order.timeline.exclude(event_type__in=REPEATABLE_TIMELINE_ENTRIES).values_list("status", flat=True))
        repeated_steps += len(steps) - len(set(steps))
        refunds_recorded_twice += max(0, order.timeline.filter(event_type=ORDER_REFUNDED).count() - succeeded[str(order.id)])
    emails = email_sends(logs)
    order_events = {
        str(event_id)
        for event_id in Notification.objects.filter(order_id__in=order_ids).values_list("source_event_id", flat=True)
    }
    # A sender that died between the send and its record leaves a claim the next sender takes over
    # and sends again, with the same Message-ID (the documented exception): one resend per takeover.
    taken_over = Counter(
        {
            f"{event_id}.{channel}": takeovers
            for event_id, channel, takeovers in Notification.objects.filter(order_id__in=order_ids, takeovers__gt=0).values_list(
                "source_event_id", "channel", "takeovers"
            )
        }
    )
    resends = {message: count - 1 for message, count in emails.items() if count > 1 and message.split(".")[0] in order_events}
    resent_after_takeover = sum(min(extra, taken_over[message]) for message, extra in resends.items())
    resent = sum(resends.values()) - resent_after_takeover
    return {
        "missing": missing,
        "unfinished": unfinished,
        "unnotified": unnotified,
        "wrong_outcome": wrong_outcome,
        "lost": len(missing) + len({o.id for o in unfinished} | {o.id for o in unnotified}),
        "duplicates": len(double_charged) + double_approved + repeated_steps + refunds_recorded_twice + resent,
        "double_charged": len(double_charged) + double_approved,
        "emails_resent": resent,
        "emails_resent_after_takeover": resent_after_takeover,
        "completed": sum(1 for o in orders.values() if o.status in OUTCOMES),
        "money": money_audit(list(orders)),
    }


def money_audit(order_ids: list[str], *, using: str | None = None) -> list[str]:
    """Where the simulated gateway's ledger and the orders disagree, one line each (none: the money
    adds up): for every order, its approved charges less the approved refunds of them equal what
    the order says it kept (its approved payment's amount less what it refunded; nothing for a
    cancelled order or one without an approved payment); no refund is approved at the gateway
    twice (under two attempts' keys), no charge is refunded beyond its amount, and every refund
    the database says succeeded was approved at the gateway under its key. ``using``: the alias
    of the orders' database (the router's by default)."""
    problems = []
    charges = list(SimulatedCharge.objects.filter(order_id__in=order_ids, approved=True))
    gateway_refunds = list(
        SimulatedRefund.objects.filter(charge_reference__in=[c.reference for c in charges], approved=True).values_list(
            "charge_reference", "idempotency_key", "amount"
        )
    )
    given_back = defaultdict(Decimal)
    for reference, _key, amount in gateway_refunds:
        given_back[reference] += amount
    ledger_kept = defaultdict(Decimal)
    for charge in charges:
        if given_back[charge.reference] > charge.amount:
            problems.append(
                f"charge {charge.reference} of order {charge.order_id}: {given_back[charge.reference]} refunded of {charge.amount}"
            )
        ledger_kept[charge.order_id] += charge.amount - given_back[charge.reference]
    payments = {
        str(p.order_id): p.amount - p.refunded_amount
        for p in Payment.objects.using(using).filter(order_id__in=order_ids, status=PaymentStatus.APPROVED)
    }
    for order_id, status in Order.objects.using(using).filter(pk__in=order_ids).values_list("pk", "status"):
        kept = Decimal("0") if status == OrderStatus.CANCELLED else payments.get(str(order_id), Decimal("0"))
        if ledger_kept[str(order_id)] != kept:
            problems.append(f"order {order_id} ({status}) says it kept {kept}, the gateway's ledger {ledger_kept[str(order_id)]}")
    # A refund's attempts are keyed refund:<id>:<attempt>.
    approved_keys = {key for _reference, key, _amount in gateway_refunds}
    approvals = Counter(key.split(":")[1] for key in approved_keys)
    for refund_id, status, key in Refund.objects.using(using).filter(order_id__in=order_ids).values_list("pk", "status", "idempotency_key"):
        if approvals[str(refund_id)] > 1:
            problems.append(f"refund {refund_id} approved {approvals[str(refund_id)]} times at the gateway")
        if status == RefundStatus.SUCCEEDED and key not in approved_keys:
            problems.append(f"refund {refund_id} SUCCEEDED without an approved refund under {key} at the gateway")
    return problems


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
