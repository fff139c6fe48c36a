"""Which Celery work each event starts. Tasks are known by name only: the bridge never imports
a task module or the Celery app (``celery.signature`` binds to the app of the running process)."""

from __future__ import annotations

from celery import Signature, chain, signature

from events.contract import (
    EVENT_TOPICS,
    NOTIFICATION_SENT,
    ORDER_CREATED,
    ORDER_PAID,
    ORDER_PROCESSING,
    CUSTOMER_EVENTS,
    ORDER_CANCELLED,
    ORDER_EVENTS,
    ORDER_REFUNDED,
    REFUND_FAILED,
    REFUND_REQUESTED,
    PAYMENT_FAILED,
    TOPIC_DLQ,
    DeadLetterMessage,
    Event,
)

ARCHIVE_DEAD_LETTER = "events.archive_dead_letter"
CHARGE_PAYMENT = "payments.charge_payment"
PROCESS_ORDERS = "orders.process_orders"
CHARGE_PAYMENTS = "payments.charge_payments"
REFUND_PAYMENT = "payments.refund_payment"
SEND_NOTIFICATIONS = "notifications.send_notifications_batch"
DELIVER_WEBHOOKS = "webhooks.deliver_events"
SEND_WEBHOOK = "webhooks.send_delivery"
# Events per task of a batch: fewer tasks than events, while a large batch still spreads over
# the workers' threads.
EVENTS_PER_TASK = 20


# What the bridge consumes: the contract's topics that carry an event the pipeline acts on, and
# dlq, whose messages are archived for the admin.
TOPICS_READ = (*dict.fromkeys(EVENT_TOPICS[event_type] for event_type in ORDER_EVENTS), TOPIC_DLQ)


def _task(name: str, *args) -> Signature:
    return signature(name, args=args, immutable=True)


def charge(event: Event) -> Signature:
    """The one way a charge starts, whether the chain's or an operator's retry."""
    return _task(CHARGE_PAYMENT, event.payload)


def in_chunks(items: list) -> list[list]:
    """``items`` by EVENTS_PER_TASK."""
    return [items[start : start + EVENTS_PER_TASK] for start in range(0, len(items), EVENTS_PER_TASK)]


def starts_order(event: Event) -> bool:
    """Whether the event starts an order's chain, which the orders of a batch go through together
    (``order_chain``)."""
    return event.type == ORDER_CREATED


def order_chain(events: list[Event]) -> Signature:
    """The chain of the orders of some ORDER_CREATED events (at most EVENTS_PER_TASK): processed
    together, then charged together, each order's outcome its own."""
    payloads = [event.payload for event in events]
    return chain(_task(PROCESS_ORDERS, payloads), _task(CHARGE_PAYMENTS, payloads))


def tasks_for(event: Event) -> list[Signature]:
    """The pipeline tasks to start for an event (an empty list: nothing to do here, or nothing
    of its own). The start of an order's chain is not among them (``starts_order``), nor the
    customer's notifications (``notifies``): the bridge starts those for the batch."""
    if event.type == ORDER_CREATED:
        return []
    if event.type == ORDER_PROCESSING and event.attempt > 1:
        return [charge(event)]  # an operator's payment retry
    if event.type == REFUND_REQUESTED:
        return [_task(REFUND_PAYMENT, event.payload)]
    if event.type in (ORDER_PROCESSING, ORDER_PAID, PAYMENT_FAILED, ORDER_CANCELLED, ORDER_REFUNDED, REFUND_FAILED, NOTIFICATION_SENT):
        return []
    raise ValueError(f"no route for {event.type}")  # parse_event lets only contract types through


def notifies(event: Event) -> bool:
    """Whether the customer is told about this event."""
    return event.type in CUSTOMER_EVENTS


def notification_tasks(events: list[Event]) -> list[Signature]:
    """The notifications of a batch of events, EVENTS_PER_TASK events per task."""
    return [_task(SEND_NOTIFICATIONS, [event.payload for event in chunk]) for chunk in in_chunks(events)]


def webhook_tasks(events: list[Event]) -> list[Signature]:
    """The webhook deliveries of a batch's order events: one task, on the webhooks queue, which
    hands each pending delivery to a send task of its own."""
    return [_task(DELIVER_WEBHOOKS, [event.event_id for event in events])] if events else []


def webhook_send_task(delivery_id: str) -> Signature:
    """A send of one delivery (the reconciler's, for a delivery due)."""
    return _task(SEND_WEBHOOK, delivery_id)


def dead_letter_task(message: DeadLetterMessage) -> Signature:
    """The task that archives a dlq message (its bytes travel base64 in the task's JSON)."""
    return _task(ARCHIVE_DEAD_LETTER, message.as_task_argument())
