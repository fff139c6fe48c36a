from celery import shared_task

from orders.tasks import dead_letter_on_refusal, park_on_give_up
from orders_project.celery import run_with_retries
from payments import services

WORKER_SOURCE = "payment-worker"


def charge_order_for(envelope: dict):
    """What ``charge_payment`` does with its event, once (the benchmark calls it too)."""
    return services.charge_order(
        order_id=envelope["order"]["id"],
        event_id=envelope["event_id"],
        source=WORKER_SOURCE,
        item_snapshots=envelope["order"]["items"],
    )


@shared_task(bind=True, name="payments.charge_payment")
def charge_payment(self, envelope: dict) -> None:
    """Charge the order an ORDER_CREATED event is about (second step of the chain)."""
    run_with_retries(
        self,
        step=lambda: charge_order_for(envelope),
        give_up=park_on_give_up(envelope=envelope, reason="payment_gave_up", source=WORKER_SOURCE),
        refuse=dead_letter_on_refusal(envelope=envelope, source=WORKER_SOURCE),
    )
