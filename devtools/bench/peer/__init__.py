"""The naive peer: the same order flow in the usual Django design, to measure the pipeline's cost against.

``POST /orders`` validates with the product's serializer, commits the order, its items and its
first timeline entry, and on commit queues a Celery chain: process (CREATED -> PROCESSING),
charge (the product's simulated gateway, a Payment row, PAID or PAYMENT_FAILED).
``POST /orders/<id>/cancel`` cancels at once what is not paid, and refunds what is (CANCELLING,
then CANCELLED); ``POST /orders/<id>/refunds`` records a refund; a task gives each refund back
through the gateway under its idempotency key. Each event of an order (a timeline entry) queues
on commit a task for its notifications (the product's emails, a Notification row and a timeline
entry each) and one per webhook endpoint (a signed POST with requests, a WebhookDelivery row
logged). No outbox, no Kafka, no inbox: a message lost between the commit and the queue, or a
redelivered task, is not handled.

It runs as the product's own web and worker commands (devtools.processes) with
``DJANGO_SETTINGS_MODULE`` set to ``SETTINGS_MODULE``: same gunicorn.conf.py, same Celery worker
options, same configuration. Nothing here is imported by the product.
"""

SETTINGS_MODULE = "devtools.bench.peer.settings"


def environment(app_env: dict[str, str], *, run_id: str) -> dict[str, str]:
    """The product's environment ``app_env`` with the peer's settings and a Celery queue of its own."""
    return {**app_env, "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE, "CELERY_QUEUE": f"bench-peer-{run_id}"}
