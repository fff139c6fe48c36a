"""Writes to notifications: one message per order event and enabled channel, recorded once."""

from __future__ import annotations

import datetime as dt
import os
import smtplib
import socket
from dataclasses import dataclass
from typing import Callable

import structlog
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from common.batches import apply_batch, outcome_of
from common.errors import TRANSIENT_ERRORS, TransientError, describe
from events.contract import (
    NOTIFICATION_SENT,
    ORDER_CREATED,
    ORDER_PAID,
    ORDER_PROCESSING,
    CUSTOMER_EVENTS,
    ORDER_CANCELLED,
    ORDER_REFUNDED,
    PAYMENT_FAILED,
    Event,
    InvalidEvent,
)
from events import selectors as event_selectors
from events.services import claim_event, claim_events, count_redelivery, enqueue_dead_letter, enqueue_events, refuse_event
from notifications.backends import OutgoingMessage, send_email, send_sms
from notifications.metrics import NOTIFICATIONS, TAKEOVERS
from notifications.models import Channel, Notification, NotificationStatus
from orders import selectors as order_selectors
from orders import services as order_services
from orders.models import Order

logger = structlog.get_logger(__name__)

EVENT_SOURCE = "notification-service"

# The customer is told of each of events.contract.CUSTOMER_EVENTS.
SUBJECTS = {
    ORDER_CREATED: "We received your order",
    ORDER_PROCESSING: "Your order is being processed",
    ORDER_PAID: "Payment received: your order is confirmed",
    PAYMENT_FAILED: "Payment failed for your order",
    ORDER_CANCELLED: "Your order is cancelled",
    ORDER_REFUNDED: "We refunded you",
}

SENDERS: dict[str, Callable[[OutgoingMessage], None]] = {Channel.EMAIL: send_email, Channel.SMS: send_sms}


class DeliveryFailed(TransientError):
    """The mail server or SMS provider did not take the message; worth another try."""


class Undelivered(TransientError):
    """Events of a batch that failed with a transient error, each with its error: a retry
    carries only these."""

    def __init__(self, failures: list[tuple[Event, Exception]]):
        self.failures = failures
        self.retry_args = ([event.payload for event, _error in failures],)
        super().__init__(f"{len(failures)} event(s) undelivered, the first: {describe(failures[0][1])}")


def enabled_channels() -> list[str]:
    config = settings.NOTIFICATION
    return [
        channel
        for channel, enabled in ((Channel.EMAIL, config["email_enabled"]), (Channel.SMS, config["sms_enabled"]))
        if enabled
    ]


def _handler(channel: str) -> str:
    return f"notifications.{channel}"


def handlers_for(*, event_type: str) -> list[str]:
    """The inbox handler names that must apply an event of ``event_type``: one per enabled channel
    if the customer is told about it, none otherwise."""
    return [_handler(channel) for channel in enabled_channels()] if event_type in CUSTOMER_EVENTS else []


@dataclass(frozen=True)
class Announcement:
    """What the customer is told, all of it read from the database: the order, the status the
    event announced (from the timeline entry written with the event) and, of a refund, its amount
    (from the outbox's record of the event)."""

    order: Order
    status: str
    event_type: str
    event_id: str
    correlation_id: str
    refunded: str | None = None

    def log_context(self) -> dict[str, str]:
        return {"order_id": str(self.order.id), "event_id": str(self.event_id), "correlation_id": self.correlation_id}


@dataclass(frozen=True)
class Briefing:
    """What telling the customers about a batch of events needs from the database, read in a few
    queries for the whole batch: the orders with their items, the statuses their events announced,
    the amounts their refunds gave back (by event id) and the channels already done (the inbox,
    checked again when each message is recorded)."""

    orders: dict[str, Order]
    announced: dict[tuple[str, str, str], str]
    refunded: dict[str, str]
    done: set[tuple[str, str]]


def brief(*, events: list[Event]) -> Briefing:
    order_ids = {event.order_id for event in events}
    event_ids = {event.event_id for event in events}
    refunds = event_selectors.recorded_payloads(event_ids={event.event_id for event in events if event.type == ORDER_REFUNDED})
    return Briefing(
        orders=order_selectors.orders_with_items(order_ids=order_ids),
        announced=order_selectors.announced_statuses(order_ids=order_ids, event_ids=event_ids),
        # The outbox's own record, never the message's: every copy of an event carries the same refund.
        refunded={event_id: payloads[0]["details"]["refund"]["amount"] for event_id, payloads in refunds.items()},
        done=event_selectors.applied(handlers=[_handler(channel) for channel in Channel.values], event_ids=event_ids),
    )


def announcement(*, event: Event, briefing: Briefing) -> Announcement:
    """The event's announcement, as the database has it; ``InvalidEvent`` if its order does not
    exist or never announced this event."""
    order_id, event_id, event_type = event.order_id, event.event_id, event.type
    order = briefing.orders.get(order_id)
    if order is None:
        raise InvalidEvent("unknown_order", f"no order {order_id}")
    status = briefing.announced.get((order_id, event_id, event_type))
    if status is None:
        raise InvalidEvent("unannounced_event", f"order {order_id} never announced {event_type} {event_id}")
    return Announcement(
        order=order,
        status=status,
        event_type=event_type,
        event_id=event_id,
        correlation_id=order.correlation_id,
        refunded=briefing.refunded.get(event_id),
    )


def compose(*, announcement: Announcement, channel: str) -> OutgoingMessage:
    order = announcement.order
    # A refund's amount is in the subject too: an SMS is the subject alone.
    refunded = f"{announcement.refunded} {settings.PAYMENTS['currency']}" if announcement.refunded else ""
    subject = " ".join(filter(None, [SUBJECTS[announcement.event_type], refunded, f"({order.id})"]))
    items = ", ".join(f"{item.quantity} x {item.product_name}" for item in order.items.all())
    body = f"Order {order.id}\nStatus: {announcement.status}\nTotal: {order.total_amount}\nItems: {items}\n"
    if refunded:
        body += f"Refunded: {refunded}\n"
    return OutgoingMessage(
        recipient=order.email if channel == Channel.EMAIL else order.user_id,
        subject=subject,
        body=body if channel == Channel.EMAIL else subject,
        message_key=message_key(event_id=announcement.event_id, channel=channel),
    )


def message_key(*, event_id, channel: str) -> str:
    return f"{event_id}.{channel}"


def _claimant(role: str) -> str:
    return f"{role}@{socket.gethostname()}:{os.getpid()}"


def _stale_before(now: dt.datetime) -> dt.datetime:
    return now - dt.timedelta(seconds=settings.NOTIFICATION["claim_timeout"])


def _claim_row(*, announcement: Announcement, channel: str, claimant: str, now: dt.datetime) -> Notification:
    message = compose(announcement=announcement, channel=channel)
    return Notification(
        order=announcement.order,
        source_event_id=announcement.event_id,
        source_event_type=announcement.event_type,
        channel=channel,
        recipient=message.recipient,
        subject=message.subject,
        body=message.body,
        status=NotificationStatus.SENDING,
        claimed_by=claimant,
        claimed_at=now,
    )


def _claim_all(*, wanted: list[tuple[Announcement, str]], claimant: str) -> list[Notification | None]:
    """Claim each (announcement, channel)'s message, committed before any is sent: new rows in
    SENDING, all in one statement, as on an event's first delivery; should one of them exist
    already, each is claimed on its own (``_claim``)."""
    if not wanted:
        return []
    now = timezone.now()
    rows = [_claim_row(announcement=told, channel=channel, claimant=claimant, now=now) for told, channel in wanted]
    try:
        with transaction.atomic():
            return Notification.objects.bulk_create(rows)
    except IntegrityError:
        pass  # one of them exists: each is claimed on its own
    claims = []
    for told, channel in wanted:
        with structlog.contextvars.bound_contextvars(**told.log_context()):
            claims.append(_claim(announcement=told, channel=channel, claimant=claimant))
    return claims


def _claim(*, announcement: Announcement, channel: str, claimant: str) -> Notification | None:
    """Claim the channel's message for the event, committed before it is sent: a new row in
    SENDING, or the row a failed send left UNSENT, or one whose sender held it past the claim
    timeout (taken over). None when it was sent or given up, or another sender holds it: that
    one records the outcome, or the reconciler takes its claim over once stale."""
    now = timezone.now()
    try:
        with transaction.atomic():
            row = _claim_row(announcement=announcement, channel=channel, claimant=claimant, now=now)
            row.save(force_insert=True)
            return row
    except IntegrityError:
        existing = Notification.objects.get(source_event_id=announcement.event_id, channel=channel)
    return _take(notification=existing, claimant=claimant, now=now)


def _take(*, notification: Notification, claimant: str, now: dt.datetime) -> Notification | None:
    """Claim an existing row if it is UNSENT or its claim is stale; one statement that changes it
    only as it was read, so of two claimants at once one gets it."""
    stale = notification.status == NotificationStatus.SENDING and notification.claimed_at < _stale_before(now)
    if notification.status != NotificationStatus.UNSENT and not stale:
        if notification.status == NotificationStatus.SENDING:
            logger.info("notification_claim_held", channel=notification.channel, claimed_by=notification.claimed_by)
        return None
    as_read = Notification.objects.filter(
        pk=notification.pk, status=notification.status, claimed_by=notification.claimed_by, claimed_at=notification.claimed_at
    )
    taken = as_read.update(
        status=NotificationStatus.SENDING, claimed_by=claimant, claimed_at=now, takeovers=F("takeovers") + int(stale)
    )
    if not taken:
        return None
    if stale:
        TAKEOVERS.labels(notification.channel).inc()
        logger.warning(
            "notification_claim_taken_over",
            notification_id=notification.pk,
            channel=notification.channel,
            source_event_id=str(notification.source_event_id),
            claimed_by=notification.claimed_by,
            claimed_at=notification.claimed_at.isoformat(),
            taken_by=claimant,
        )
    notification.status, notification.claimed_by, notification.claimed_at = NotificationStatus.SENDING, claimant, now
    notification.takeovers += int(stale)
    return notification


def _send(claim: Notification) -> None:
    """Send a claimed message, outside any transaction; should the mail server or SMS provider
    not take it, the claim is left UNSENT with the error (``DeliveryFailed``)."""
    channel = claim.channel
    message = OutgoingMessage(
        recipient=claim.recipient,
        subject=claim.subject,
        body=claim.body,
        message_key=message_key(event_id=claim.source_event_id, channel=channel),
    )
    try:
        SENDERS[channel](message)
    except (OSError, smtplib.SMTPException) as exc:
        Notification.objects.filter(pk=claim.pk, status=NotificationStatus.SENDING, claimed_by=claim.claimed_by).update(
            status=NotificationStatus.UNSENT, error=describe(exc)
        )
        NOTIFICATIONS.labels(channel, "error").inc()
        raise DeliveryFailed(f"{channel} to {message.recipient}: {exc}") from exc


def _deliver_all(claimed: list[tuple[Notification, Announcement]]) -> list[bool | Exception]:
    """Send each claimed message outside any transaction, then record the outcomes of those sent
    together (``_record_sent``). A sender that dies in between leaves the claims, which are taken
    over once stale and sent again with the same message key (the Message-ID of an email).
    Returns, per claim, whether its message was sent and recorded now, False if it was recorded
    meanwhile (a claim taken over from a sender that was slow, not dead), or why it failed."""
    sends = [outcome_of(lambda claim=claim: _send(claim)) for claim, _told in claimed]
    # Recorded in the order of their orders' ids, as every batch locks orders (the timeline's
    # foreign key locks each order it names): two batches never wait on each other in a cycle.
    sent = sorted((pair for pair, failure in zip(claimed, sends) if failure is None), key=lambda pair: str(pair[0].order_id))
    recorded = dict(zip((claim.pk for claim, _told in sent), apply_batch(sent, _record_sent)))
    outcomes: list[bool | Exception] = []
    for (claim, told), failure in zip(claimed, sends):
        outcome = failure if failure is not None else recorded[claim.pk]
        if outcome is True:
            NOTIFICATIONS.labels(claim.channel, "sent").inc()
            with structlog.contextvars.bound_contextvars(**told.log_context()):
                logger.info("notification_sent", channel=claim.channel, recipient=claim.recipient, event_type=told.event_type)
        outcomes.append(outcome)
    return outcomes


def _record_sent(sent: list[tuple[Notification, Announcement]]) -> list[bool]:
    """In the caller's transaction, the sent claims still SENDING recorded SENT, each with its
    channel's inbox entry and, on the first, the NOTIFICATION_SENT event and its timeline entry:
    one statement for each kind of row. Whether each was recorded now."""
    recorded = set(
        Notification.objects.select_for_update()
        .filter(pk__in=[claim.pk for claim, _told in sent], status=NotificationStatus.SENDING)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    Notification.objects.filter(pk__in=recorded).update(status=NotificationStatus.SENT, error="")
    now_recorded = [(claim, told) for claim, told in sent if claim.pk in recorded]
    first = claim_events(claims=[(_handler(claim.channel), claim.source_event_id) for claim, _told in now_recorded])
    _announce_all([pair for pair, claimed in zip(now_recorded, first) if claimed])
    return [claim.pk in recorded for claim, _told in sent]


def _announce_all(recorded: list[tuple[Notification, Announcement]]) -> None:
    events = enqueue_events(
        events=[
            dict(
                event_type=NOTIFICATION_SENT,
                order=order_selectors.order_snapshot(order=told.order),
                correlation_id=told.correlation_id,
                source=EVENT_SOURCE,
                # One per event and channel (their claim is unique): named by them, not counted on the order.
                name=f"{NOTIFICATION_SENT}/{told.event_id}/{notification.channel}",
                details={
                    "notification_id": notification.pk,
                    "channel": notification.channel,
                    "recipient": notification.recipient,
                    "source_event_id": str(told.event_id),
                    "source_event_type": told.event_type,
                },
            )
            for notification, told in recorded
        ]
    )
    order_services.record_order_events(
        entries=[
            dict(
                order_id=told.order.id,
                status=told.status,
                event_type=NOTIFICATION_SENT,
                event_id=event.event_id,
                message=f"{notification.channel} sent to {notification.recipient} for {told.event_type}",
            )
            for (notification, told), event in zip(recorded, events)
        ]
    )


def _notify(*, events: list[Event], briefing: Briefing) -> list[list[str] | Exception]:
    """Each event's message on every enabled channel not yet done: the claims of all of them
    committed together (``_claim_all``), the messages sent and their outcomes recorded together
    (``_deliver_all``). Returns, per event, the channels sent now, or what its own failure was (an
    ``InvalidEvent`` when the database does not vouch for it, a ``DeliveryFailed``...)."""
    outcomes: list[list[str] | Exception] = [[] for _ in events]
    wanted: list[tuple[int, Announcement, str]] = []
    for position, event in enumerate(events):
        with structlog.contextvars.bound_contextvars(**event.log_context()):
            pending = []
            for channel in enabled_channels():
                if (_handler(channel), event.event_id) in briefing.done:
                    count_redelivery(handler=_handler(channel), event_id=event.event_id)
                else:
                    pending.append(channel)
        if not pending:
            continue
        try:
            told = announcement(event=event, briefing=briefing)
        except InvalidEvent as refusal:
            outcomes[position] = refusal
            continue
        wanted += [(position, told, channel) for channel in pending]
    # Claimed in the order of their orders' ids (the claims' foreign key locks each order they name).
    wanted.sort(key=lambda item: str(item[1].order.id))
    claims = _claim_all(wanted=[(told, channel) for _position, told, channel in wanted], claimant=_claimant("worker"))
    claimed = [(position, claim, told) for (position, told, _channel), claim in zip(wanted, claims) if claim is not None]
    delivered = _deliver_all([(claim, told) for _position, claim, told in claimed])
    for (position, claim, _told), outcome in zip(claimed, delivered):
        if isinstance(outcomes[position], Exception):
            continue
        if isinstance(outcome, Exception):
            outcomes[position] = outcome
        elif outcome:
            outcomes[position].append(claim.channel)
    return outcomes


def send_event_notifications(*, event: Event, briefing: Briefing | None = None) -> list[str]:
    """Send the event's message on every enabled channel not yet done; returns the channels sent now.
    ``briefing``: what the database said about the event's batch (``brief``); read here if None.

    Recipient, items and amounts come from the order row (a refund's amount from the outbox's
    record of the event), never from the event; an event whose order does not exist or never
    announced it sends nothing (``InvalidEvent``).

    Per channel: the claim is committed, the message sent outside any transaction and the
    outcome recorded, so no database lock is held while a mail server talks. A copy of the event
    handled at the same moment finds the claim and leaves it to its holder.
    """
    (outcome,) = _notify(events=[event], briefing=briefing or brief(events=[event]))
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def send_batch(*, events: list[Event]) -> None:
    """The events of one batch, their claims, and then their outcomes, written together
    (``_notify``), each event's outcome its own: one that fails does not hold the others up. A
    refused event goes to dlq; an error that is not transient is recorded for its event at
    once; those that failed with a transient error are raised together (``Undelivered``)."""
    outcomes = _notify(events=events, briefing=brief(events=events))
    failures: list[tuple[Event, Exception]] = []
    for event, outcome in zip(events, outcomes):
        if not isinstance(outcome, Exception):
            continue
        with structlog.contextvars.bound_contextvars(**event.log_context()):
            if isinstance(outcome, InvalidEvent):
                logger.warning("event_refused", reason=outcome.reason, error=outcome.error)
                refuse_event(event=event, refusal=outcome, source=EVENT_SOURCE)
            elif isinstance(outcome, TRANSIENT_ERRORS):
                failures.append((event, outcome))
            else:
                logger.error("notification_step_failed", error=describe(outcome), exc_info=outcome)
                try:
                    _record_failure(event=event, exc=outcome)
                except TRANSIENT_ERRORS as recording_error:  # the database away: try the event again
                    failures.append((event, recording_error))
    if failures:
        raise Undelivered(failures)


def record_batch_failure(*, events: list[Event], exc: Exception) -> None:
    """After the last retry (or an error that is not transient): record the notifications of
    the events still undelivered FAILED, each with its own error."""
    failures = exc.failures if isinstance(exc, Undelivered) else [(event, exc) for event in events]
    for event, error in failures:
        with structlog.contextvars.bound_contextvars(**event.log_context()):
            _record_failure(event=event, exc=error)


def _record_failure(*, event: Event, exc: Exception) -> None:
    """A transient error (the database away) propagates, to be retried; any other is logged, so
    that one event cannot stop the rest of its batch."""
    try:
        record_delivery_failure(event=event, error=describe(exc))
    except TRANSIENT_ERRORS:
        raise
    except Exception:  # noqa: BLE001 - logged with its traceback; the other events go on
        logger.exception("notification_failure_unrecorded")


def record_delivery_failure(*, event: Event, error: str) -> None:
    """After the last retry: each channel not yet sent is recorded FAILED and the event goes to dlq."""
    told = announcement(event=event, briefing=brief(events=[event]))
    with transaction.atomic():
        for channel in enabled_channels():
            if claim_event(handler=_handler(channel), event_id=told.event_id):
                message = compose(announcement=told, channel=channel)
                Notification.objects.update_or_create(
                    source_event_id=told.event_id,
                    channel=channel,
                    defaults={
                        "order": told.order,
                        "source_event_type": told.event_type,
                        "recipient": message.recipient,
                        "subject": message.subject,
                        "body": message.body,
                        "status": NotificationStatus.FAILED,
                        "error": error,
                    },
                )
                NOTIFICATIONS.labels(channel, "failed").inc()
        enqueue_dead_letter(
            original=event.payload,
            key=str(told.order.id),
            reason="notification_gave_up",
            error=error,
            source=EVENT_SOURCE,
            correlation_id=told.correlation_id,
        )
    logger.error("notification_failed", event_type=told.event_type, error=error)


def finish_stale_claims(*, now: dt.datetime, limit: int) -> int:
    """The reconciler's part: take over the claims held past the claim timeout (their sender
    died between the claim and the outcome) and send them again, same message key; returns how
    many were sent. One that fails again is left UNSENT for the event's next delivery."""
    stale = (
        Notification.objects.filter(status=NotificationStatus.SENDING, claimed_at__lt=_stale_before(now))
        .select_related("order")
        .order_by("claimed_at")[:limit]
    )
    claimant = _claimant("reconciler")
    taken = []
    for notification in stale:
        claim = _take(notification=notification, claimant=claimant, now=now)
        if claim is None:
            continue
        event_id, event_type, order_id = str(claim.source_event_id), claim.source_event_type, str(claim.order_id)
        status = order_selectors.announced_statuses(order_ids={order_id}, event_ids={event_id})[(order_id, event_id, event_type)]
        told = Announcement(
            order=claim.order, status=status, event_type=event_type, event_id=event_id, correlation_id=claim.order.correlation_id
        )
        taken.append((claim, told))
    sent = 0
    for (claim, _told), outcome in zip(taken, _deliver_all(taken)):
        if isinstance(outcome, DeliveryFailed):
            logger.warning("notification_takeover_failed", notification_id=claim.pk, error=str(outcome))
        elif isinstance(outcome, Exception):
            raise outcome
        else:
            sent += outcome
    return sent
