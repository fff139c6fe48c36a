from celery import shared_task

from notifications import services
from orders_project.celery import run_with_retries


@shared_task(bind=True, name="notifications.send_notifications")
def send_notifications(self, envelope: dict) -> None:
    """An order event: tell the customer on each enabled channel."""
    run_with_retries(
        self,
        step=lambda: services.send_event_notifications(envelope=envelope),
        give_up=lambda exc: services.record_delivery_failure(envelope=envelope, error=f"{type(exc).__name__}: {exc}"),
    )
