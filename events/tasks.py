import base64

import structlog
from celery import shared_task

from events import services
from orders_project.celery import run_with_retries

logger = structlog.get_logger(__name__)


@shared_task(bind=True, name="events.archive_dead_letter")
def archive_dead_letter(self, message: dict) -> None:
    """A dlq message: keep it in the database, where operators see it and can re-publish it."""

    def give_up(exc: Exception) -> None:
        # The message stays in the dlq topic; only its copy for the admin is missing.
        logger.error("dead_letter_not_archived", error=f"{type(exc).__name__}: {exc}", key=message["key"])

    run_with_retries(
        self,
        step=lambda: services.archive_dead_letter(
            key=message["key"], headers=message["headers"], value=base64.b64decode(message["value_b64"])
        ),
        give_up=give_up,
    )
