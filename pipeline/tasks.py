"""The pipeline's Celery tasks: thin steps that call the apps' services, each run by
``run_with_retries``. Task names are the wire contract with the bridge (``messaging.routes``)
and with messages already queued, so they keep their apps' prefixes.

The ORDER_CREATED events of a bridge batch start one chain for their orders, ``process_orders``
then ``charge_payments``, each order's outcome its own; an operator's payment retry comes in
through ``charge_payment``; every refund through ``refund_payment``; the customer's notifications
go out in batches.
"""

import structlog
from celery import shared_task

from events import services as event_services
from events.contract import DeadLetterMessage, Event, InvalidEvent
from events.services import refuse_event
from notifications import services as notification_services
from orders import services as order_services
from payments import services as payment_services
from webhooks import services as webhook_services
from common.errors import TRANSIENT_ERRORS
from pipeline.retries import OrdersUnfinished, describe, run_with_retries

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


def _run_order_batch_step(task, *, payloads: list[dict], handle_together, reason: str, source: str) -> None:
    """A chain step for the orders of one bridge batch: ``handle_together`` (an order service
    taking their events in the order of the orders' ids, and returning each order's failure by
    its event's position) applies the events together. Each failure is then its order's own: a
    refused event goes to dlq, an error that is not transient parks the order at once, a
    transient one is retried for the orders that met it alone; after the last retry they are parked."""
    events = sorted((Event(payload) for payload in payloads), key=lambda event: str(event.order_id))
    # The task's own log lines (and Celery's, its chain's hand-over among them) name its orders.
    structlog.contextvars.bind_contextvars(order_ids=[str(event.order_id) for event in events])

    def park(event: Event, exc: Exception) -> None:
        with structlog.contextvars.bound_contextvars(**event.log_context()):
            order_services.park_order(
                order_id=event.order_id, reason=reason, error=describe(exc), original_event=event.payload, source=source
            )

    def step() -> None:
        failures = handle_together(events=events, source=source)
        unfinished = []
        for position, exc in sorted(failures.items()):
            event = events[position]
            if isinstance(exc, InvalidEvent):
                with structlog.contextvars.bound_contextvars(**event.log_context()):
                    logger.warning("event_refused", reason=exc.reason, error=exc.error)
                refuse_event(event=event, refusal=exc, source=source)
            elif isinstance(exc, TRANSIENT_ERRORS):
                unfinished.append((event, exc))
            else:
                with structlog.contextvars.bound_contextvars(**event.log_context()):
                    logger.error("task_step_failed", error=describe(exc), exc_info=exc)
                park(event, exc)
        if unfinished:
            raise OrdersUnfinished(unfinished)

    def give_up(exc: Exception) -> None:
        for event, error in exc.failures if isinstance(exc, OrdersUnfinished) else [(event, exc) for event in events]:
            park(event, error)

    run_with_retries(task, step=step, give_up=give_up)


@shared_task(bind=True, name="orders.process_orders")
def process_orders(self, payloads: list[dict]) -> None:
    """ORDER_CREATED of the orders of one bridge batch: taken into processing together (the
    first step of their chain)."""
    handle = order_services.start_processing_together
    _run_order_batch_step(self, payloads=payloads, handle_together=handle, reason="processing_gave_up", source=ORDER_WORKER)


@shared_task(bind=True, name="payments.charge_payments")
def charge_payments(self, payloads: list[dict]) -> None:
    """The chain's charges of the orders of one bridge batch, their gateway calls side by side."""
    handle = payment_services.charge_orders
    _run_order_batch_step(self, payloads=payloads, handle_together=handle, reason="payment_gave_up", source=PAYMENT_WORKER)


# The name is the one tasks already queued carry (the bridge now starts ``process_orders``).
@shared_task(bind=True, name="orders.process_order")
def process_order(self, payload: dict) -> None:
    """ORDER_CREATED: take the order into processing (first step of the chain)."""
    _run_order_step(
        self, payload=payload, handle=order_services.start_processing, reason="processing_gave_up", source=ORDER_WORKER
    )


@shared_task(bind=True, name="payments.charge_payment")
def charge_payment(self, payload: dict) -> None:
    """Charge the order an event asks a charge for: the ORDER_PROCESSING of an operator's payment
    retry (or a chain's ORDER_CREATED queued before ``charge_payments``)."""
    _run_order_step(
        self, payload=payload, handle=payment_services.charge_order, reason="payment_gave_up", source=PAYMENT_WORKER
    )


@shared_task(bind=True, name="payments.refund_payment")
def refund_payment(self, payload: dict) -> None:
    """REFUND_REQUESTED: give the refund back through the gateway; after the last retry the refund
    is FAILED with its event on dlq (the order is not parked: an operator retries the refund)."""
    event = Event(payload)
    run_with_retries(
        self,
        step=lambda: payment_services.refund_payment(
            order_id=event.order_id, event_id=event.event_id, refund_id=event.refund["id"], source=PAYMENT_WORKER
        ),
        give_up=lambda exc: payment_services.give_up_refund(
            order_id=event.order_id,
            refund_id=event.refund["id"],
            error=describe(exc),
            original_event=event.payload,
            reason="refund_gave_up",
            source=PAYMENT_WORKER,
        ),
        refuse=lambda refusal: refuse_event(event=event, refusal=refusal, source=PAYMENT_WORKER),
    )


@shared_task(bind=True, name="notifications.send_notifications_batch")
def send_notifications_batch(self, payloads: list[dict]) -> None:
    """Order events from one bridge batch: tell each event's customer on each enabled channel
    (``notification_services.send_batch``); a retry carries only the events that failed."""
    events = [Event(payload) for payload in payloads]
    run_with_retries(
        self,
        step=lambda: notification_services.send_batch(events=events),
        give_up=lambda exc: notification_services.record_batch_failure(events=events, exc=exc),
    )


# Webhook tasks run on the webhooks queue (settings.CELERY_TASK_ROUTES), taken by a worker of its own.
@shared_task(name="webhooks.deliver_events")
def deliver_events(event_ids: list[str]) -> None:
    """Order events of one bridge batch: their pending deliveries sent here together
    (``webhook_services.send_deliveries``). A next attempt due soon goes to a send task with its
    countdown; a delivery whose attempt failed on our side (the database away, say) goes to a
    send task of its own."""
    deliveries = webhook_services.pending_deliveries(event_ids=event_ids)
    for delivery_id, countdown in zip(deliveries, webhook_services.send_deliveries(delivery_ids=deliveries)):
        if isinstance(countdown, Exception):
            logger.warning("webhook_send_failed", delivery_id=delivery_id, error=describe(countdown))
            send_webhook.delay(delivery_id)
        elif countdown is not None:
            send_webhook.apply_async(args=(delivery_id,), countdown=countdown)


@shared_task(bind=True, name="webhooks.send_delivery")
def send_webhook(self, delivery_id: str) -> None:
    """One attempt of a delivery. A next attempt due soon is queued with its countdown; a later
    one is handed to a task by the reconciler when it is due."""
    countdown = webhook_services.send_delivery(delivery_id=delivery_id)
    if countdown is not None:
        self.apply_async(args=(delivery_id,), countdown=countdown)


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
