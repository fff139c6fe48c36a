"""Dead letters re-published by an operator: only an event the outbox recorded, exactly as recorded,
and once."""

from __future__ import annotations

import structlog
from django.db import transaction
from django.utils import timezone

from events.contract import Event, InvalidEvent, check_recorded, parse_event
from events.models import DeadLetter, OutboxEvent
from events.selectors import recorded_payloads
from events.services import republish_event
from orders import services as order_services

logger = structlog.get_logger(__name__)


class DeadLetterAlreadyRepublished(Exception):
    def __init__(self, dead_letter: DeadLetter):
        super().__init__(
            f"Dead letter {dead_letter.pk} was re-published already, at {dead_letter.republished_at}: follow its "
            "order's timeline; if the event failed again, its new dead letter is the one to re-publish"
        )


# What an operator can do instead when a dead letter is not re-published, by the refusal's reason.
NOT_RECORDED = (
    "only an event the outbox recorded is re-published, and this is none (a message this service did not "
    "write, or one whose history was deleted after the retention period): leave it as the record of what "
    "was refused; if its order needs something, use the order's actions (retry payment, cancel, re-drive)"
)
NOT_AS_RECORDED = (
    "only an event exactly as the outbox recorded it is re-published: clear 'fixed value' to re-publish "
    "the original, or store in it the event's payload from Events › Outbox events"
)
REPUBLISH_REFUSALS = {"unknown_event": NOT_RECORDED, "event_mismatch": NOT_AS_RECORDED}


def recorded_event(dead_letter: DeadLetter) -> Event:
    """The event a dead letter re-publishes: its fixed value if set, else its value, which must
    be a contract event the outbox recorded under its id, exactly as recorded, and (when the dead
    letter knows its event id) that very event. Raises ``InvalidEvent`` saying why and what to do.

    The bridge trusts whatever the outbox holds, and a re-publish goes through the outbox: without
    this check a message the bridge refused as forged (unknown_event, event_mismatch), or a fixed
    value altered from the recorded event, would become trusted once re-published.
    """
    raw = (dead_letter.fixed_value or dead_letter.value).encode()
    try:
        event = parse_event(raw, max_bytes=len(raw) + 1)
    except InvalidEvent as exc:
        raise InvalidEvent(
            exc.reason,
            f"{exc.error}: store a corrected JSON event in 'fixed value', then re-publish; "
            "only the event exactly as the outbox recorded it (Events › Outbox events, its payload) is re-published",
        ) from None
    if dead_letter.event_id and event.event_id != dead_letter.event_id:
        raise InvalidEvent(
            "event_mismatch",
            f"the fixed value is event {event.event_id}, this dead letter is event {dead_letter.event_id}: {NOT_AS_RECORDED}",
        )
    try:
        check_recorded(event, recorded=recorded_payloads(event_ids={event.event_id}).get(event.event_id, []))
    except InvalidEvent as exc:
        raise InvalidEvent(exc.reason, f"{exc.error}: {REPUBLISH_REFUSALS.get(exc.reason, NOT_RECORDED)}") from None
    return event


def republish_dead_letter(*, dead_letter_id: int, requested_by: str) -> OutboxEvent:
    """Send a dead-lettered event (or its fixed value) to its topic again, only if the outbox
    recorded it (``recorded_event``; else nothing is written).

    A parked order resumes in the status it was parked from, so the handlers that had not applied
    the event do their part; those that had (their inbox holds the event id) do nothing again.
    Recorded in the order's timeline.
    """
    with transaction.atomic():
        dead_letter = DeadLetter.objects.select_for_update().get(pk=dead_letter_id)
        if dead_letter.republished_at:
            raise DeadLetterAlreadyRepublished(dead_letter)
        event = recorded_event(dead_letter)
        order = order_services.resume_order(
            order_id=event.order_id, reason=f"retry {event.type}", requested_by=requested_by
        )
        outbox_event = republish_event(event=event)
        dead_letter.republished_at = timezone.now()
        dead_letter.republished_by = requested_by
        dead_letter.republished_event = outbox_event
        dead_letter.save(update_fields=["republished_at", "republished_by", "republished_event"])
        if order:
            order_services.record_order_event(
                order_id=order.pk,
                status=order.status,
                event_type=event.type,
                event_id=event.event_id,
                message=f"Re-published from dlq by {requested_by} (was: {dead_letter.reason})",
            )
    logger.info("dead_letter_republished", **event.log_context(), requested_by=requested_by)
    return outbox_event
