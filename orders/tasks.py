from typing import Callable

from celery import shared_task

from events.contract import InvalidEvent
from events.services import refuse_event
from orders import services
from orders_project.celery import run_with_retries

WORKER_SOURCE = "order-worker"


def park_on_give_up(*, envelope: dict, reason: str, source: str) -> Callable[[Exception], None]:
    """The ``give_up`` of a chain step: park the event's order as FAILED with a dlq event."""

    def park(exc: Exception) -> None:
        services.park_order(
            order_id=envelope["order"]["id"],
            reason=reason,
            error=f"{type(exc).__name__}: {exc}",
            original_event=envelope,
            source=source,
        )

    return park


def dead_letter_on_refusal(*, envelope: dict, source: str) -> Callable[[InvalidEvent], None]:
    """The ``refuse`` of a pipeline step: the event goes to dlq with the reason, nothing else changes."""
    return lambda refusal: refuse_event(envelope=envelope, refusal=refusal, source=source)


def start_processing_for(envelope: dict) -> bool:
    """What ``process_order`` does with its event, once (the benchmark calls it too)."""
    return services.start_processing(
        order_id=envelope["order"]["id"],
        event_id=envelope["event_id"],
        source=WORKER_SOURCE,
        item_snapshots=envelope["order"]["items"],
    )


@shared_task(bind=True, name="orders.process_order")
def process_order(self, envelope: dict) -> None:
    """ORDER_CREATED: take the order into processing (first step of the chain)."""
    run_with_retries(
        self,
        step=lambda: start_processing_for(envelope),
        give_up=park_on_give_up(envelope=envelope, reason="processing_gave_up", source=WORKER_SOURCE),
        refuse=dead_letter_on_refusal(envelope=envelope, source=WORKER_SOURCE),
    )
