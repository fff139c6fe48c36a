"""The pipeline's Celery tasks: thin steps that call the apps' services, each run by
``run_with_retries``. Task names are the wire contract with the bridge (``messaging.routes``)
and with messages already queued, so they keep their apps' prefixes.

ORDER_CREATED starts the chain ``process_order`` then ``charge_payment``; every charge, first or
an operator's retry, comes in through ``charge_payment``; the customer's notifications go out in
batches.
"""

import structlog
from celery import shared_task

from events import services as event_services
from events.contract import DeadLetterMessage, Event, InvalidEvent
from events.services import refuse_event
from notifications import services as notification_services
from orders import services as order_services
from payments import services as payment_services
from pipeline.retries import TRANSIENT_ERRORS, describe, run_with_retries

logger = structlog.get_logger(__name__)

ORDER_WORKER = "order-worker"
PAYMENT_WORKER = "payment-worker"


def _run_order_step(task, *, payload: dict, handle, reason: str, source: str) -> None:
    """A chain step: ``handle`` (an order service taking the event's ids) applies the event; a
    refused event goes to dlq; after the last retry the order is parked with ``reason``."""
    event = Event(payload)
    run_with_retries(
        task,
        step=lambda: handle(order_id=event.order_id, event_id=event.event_id, source=source),
        give_up=lambda exc: order_services.park_order(
            order_id=event.order_id, reason=reason, error=describe(exc), original_event=event.payload, source=source
        ),
        refuse=lambda refusal: refuse_event(event=event, refusal=refusal, source=source),
    )


@shared_task(bind=True, name="orders.process_order")
def process_order(self, payload: dict) -> None:
    """ORDER_CREATED: take the order into processing (first step of the chain)."""
    _run_order_step(
        self, payload=payload, handle=order_services.start_processing, reason="processing_gave_up", source=ORDER_WORKER
    )


@shared_task(bind=True, name="payments.charge_payment")
def charge_payment(self, payload: dict) -> None:
    """Charge the order an event asks a charge for: the chain's ORDER_CREATED, or the
    ORDER_PROCESSING of an operator's payment retry."""
    _run_order_step(
        self, payload=payload, handle=payment_services.charge_order, reason="payment_gave_up", source=PAYMENT_WORKER
    )


def _record_failure(event: Event, exc: Exception) -> None:
    """Record the event's notifications FAILED and send it to dlq. A transient error (the database
    away) propagates, to be retried; any other is logged, so that one event cannot stop the rest
    of its batch."""
    try:
        notification_services.record_delivery_failure(event=event, error=describe(exc))
    except TRANSIENT_ERRORS:
        raise
    except Exception:  # noqa: BLE001 - logged with its traceback; the other events go on
        logger.exception("notification_failure_unrecorded")


@shared_task(bind=True, name="notifications.send_notifications_batch")
def send_notifications_batch(self, payloads: list[dict]) -> None:
    """Order events from one bridge batch: tell each event's customer on each enabled channel.

    Each event stands alone: one that fails does not hold the others up, the retry carries only
    the events that failed with a transient error, and an error that is not transient is
    recorded for its event at once.
    """
    failed: list[dict] = []

    def send_each() -> None:
        errors: list[Exception] = []
        events = list(map(Event, payloads))
        try:
            briefing = notification_services.brief(events=events)
        except Exception:
            failed.extend(payloads)  # nothing was sent: the retry, or the give-up, takes them all
            raise
        for event in events:
            with structlog.contextvars.bound_contextvars(**event.log_context()):
                try:
                    notification_services.send_event_notifications(event=event, briefing=briefing)
                except InvalidEvent as refusal:
                    logger.warning("event_refused", reason=refusal.reason, error=refusal.error)
                    refuse_event(event=event, refusal=refusal, source=notification_services.EVENT_SOURCE)
                except TRANSIENT_ERRORS as exc:
                    failed.append(event.payload)
                    errors.append(exc)
                except Exception as exc:  # noqa: BLE001 - a bug or data it cannot handle: recorded, not retried
                    logger.exception("notification_step_failed")
                    try:
                        _record_failure(event, exc)
                    except TRANSIENT_ERRORS as recording_error:  # the database away: try the event again
                        failed.append(event.payload)
                        errors.append(recording_error)
        if errors:
            raise errors[0]

    def give_up(exc: Exception) -> None:
        for event in map(Event, failed):
            _record_failure(event, exc)

    run_with_retries(self, step=send_each, give_up=give_up, retry_args=(failed,))


@shared_task(name="notifications.send_notifications")
def send_notifications(payload: dict) -> None:
    """One event, as a bridge of the previous release queued it (during a rolling upgrade):
    handed on as a batch of one."""
    send_notifications_batch.delay([payload])


# The name is the one tasks already queued carry.
@shared_task(bind=True, name="events.archive_dead_letter")
def archive_dead_letter(self, message: dict) -> None:
    """A dlq message: keep it in the database, where operators see it and can re-publish it.
    ``message``: ``DeadLetterMessage.as_task_argument`` (or the previous release's form)."""
    dead_letter = DeadLetterMessage.from_task_argument(message)

    def give_up(exc: Exception) -> None:
        # The message stays in the dlq topic; only its copy for the admin is missing.
        logger.error("dead_letter_not_archived", error=describe(exc), key=repr(dead_letter.key))

    run_with_retries(
        self,
        step=lambda: event_services.archive_dead_letter(
            key=dead_letter.key, headers=dead_letter.headers, value=dead_letter.value, headers_error=dead_letter.headers_error
        ),
        give_up=give_up,
    )
