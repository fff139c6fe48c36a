from celery import shared_task

from orders.tasks import park_on_give_up
from orders_project.celery import run_with_retries
from payments import services

WORKER_SOURCE = "payment-worker"


@shared_task(bind=True, name="payments.charge_payment")
def charge_payment(self, envelope: dict) -> None:
    """Charge the order an ORDER_CREATED event is about (second step of the chain)."""
    run_with_retries(
        self,
        step=lambda: services.charge_order(
            order_id=envelope["order"]["id"],
            event_id=envelope["event_id"],
            source=WORKER_SOURCE,
            item_snapshots=envelope["order"]["items"],
        ),
        give_up=park_on_give_up(envelope=envelope, reason="payment_gave_up", source=WORKER_SOURCE),
    )
