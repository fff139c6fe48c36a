"""The two Celery workers as run-local and the containers start them: the pipeline's worker takes
only the pipeline's queue and the webhook worker only the webhooks queue, so a receiver that holds
a send holds no thread the orders need; each serves its metrics as itself."""

from __future__ import annotations

import uuid

import pytest
from celery import signature

from devtools.harness.bridge import celery_broker
from devtools.harness.process_group import ProcessGroup
from devtools.harness.waiting import wait_until
from messaging.routes import SEND_NOTIFICATIONS, SEND_WEBHOOK, webhook_send_task
from orders_project.celery import app as celery_app

TASKS_EACH = 4


def received(group: ProcessGroup, name: str) -> list[str]:
    return [event["task"] for event in group.log_events(name) if event["event"] == "task_received"]


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_each_worker_takes_only_its_own_queue(tmp_path, kafka_broker):
    group = ProcessGroup.for_tests(kafka_brokers=kafka_broker.bootstrap_servers, work_dir=tmp_path)
    try:
        group.start("worker")
        group.start("webhook-worker")
        with celery_broker(group.env["CELERY_BROKER_URL"], queue=group.env["CELERY_QUEUE"]) as app:
            # The project's routes, to this run's webhooks queue.
            app.conf.task_routes = {pattern: {"queue": group.env["WEBHOOKS_QUEUE"]} for pattern in celery_app.conf.task_routes}
            for _ in range(TASKS_EACH):
                webhook_send_task(str(uuid.uuid4())).apply_async()  # no such delivery: nothing is sent
                signature(SEND_NOTIFICATIONS, args=([],)).apply_async()  # no event: nobody is told

        wait_until(
            lambda: len(received(group, "worker")) + len(received(group, "webhook-worker")) >= 2 * TASKS_EACH,
            timeout=60,
            message=f"the workers did not take the tasks (logs: {tmp_path})",
        )
        assert received(group, "worker") == [SEND_NOTIFICATIONS] * TASKS_EACH
        assert received(group, "webhook-worker") == [SEND_WEBHOOK] * TASKS_EACH
        serving = {name: [e["process"] for e in group.log_events(name) if e["event"] == "metrics_serving"] for name in ("worker", "webhook-worker")}
        assert serving == {"worker": ["worker"], "webhook-worker": ["webhook-worker"]}
    finally:
        group.stop_all()
