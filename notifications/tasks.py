import structlog
from celery import shared_task

from events.contract import InvalidEvent, log_context
from events.services import refuse_event
from notifications import services
from orders_project.celery import TRANSIENT_ERRORS, run_with_retries

logger = structlog.get_logger(__name__)


def _record_failure(envelope: dict, exc: Exception) -> None:
    """Record the event's notifications FAILED and send it to dlq. A transient error (the database
    away) propagates, to be retried; any other is logged, so that one event cannot stop the rest
    of its batch."""
    try:
        services.record_delivery_failure(envelope=envelope, error=f"{type(exc).__name__}: {exc}")
    except TRANSIENT_ERRORS:
        raise
    except Exception:  # noqa: BLE001 - logged with its traceback; the other events go on
        logger.exception("notification_failure_unrecorded")


@shared_task(bind=True, name="notifications.send_notifications_batch")
def send_notifications_batch(self, envelopes: list[dict]) -> None:
    """Order events from one bridge batch: tell each event's customer on each enabled channel.

    Each event stands alone: one that fails does not hold the others up, the retry carries only
    the events that failed with a transient error, and an error that is not transient is
    recorded for its event at once.
    """
    failed: list[dict] = []

    def send_each() -> None:
        errors: list[Exception] = []
        for envelope in envelopes:
            with structlog.contextvars.bound_contextvars(**log_context(envelope)):
                try:
                    services.send_event_notifications(envelope=envelope)
                except InvalidEvent as refusal:
                    logger.warning("event_refused", reason=refusal.reason, error=refusal.error)
                    refuse_event(envelope=envelope, refusal=refusal, source=services.EVENT_SOURCE)
                except TRANSIENT_ERRORS as exc:
                    failed.append(envelope)
                    errors.append(exc)
                except Exception as exc:  # noqa: BLE001 - a bug or data it cannot handle: recorded, not retried
                    logger.exception("notification_step_failed")
                    try:
                        _record_failure(envelope, exc)
                    except TRANSIENT_ERRORS as recording_error:  # the database away: try the event again
                        failed.append(envelope)
                        errors.append(recording_error)
        if errors:
            raise errors[0]

    def give_up(exc: Exception) -> None:
        for envelope in failed:
            _record_failure(envelope, exc)

    run_with_retries(self, step=send_each, give_up=give_up, retry_args=(failed,))


@shared_task(name="notifications.send_notifications")
def send_notifications(envelope: dict) -> None:
    """One event, as a bridge of the previous release queued it (during a rolling upgrade):
    handed on as a batch of one."""
    send_notifications_batch.delay([envelope])
