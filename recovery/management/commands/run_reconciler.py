import datetime as dt

from django.conf import settings
from django.core.management.base import BaseCommand

from common.lifecycle import stop_on_signals
from common.tracing import setup_tracing
from messaging.progress import BridgeProgress, queued_tasks
from messaging.routes import topics_to_read
from recovery.reconciler import run_reconciler
from recovery.selectors import Downstream, RedrivePolicy


class Command(BaseCommand):
    help = "The reconciler: re-drive stuck orders and unhandled events from the database until SIGTERM or Ctrl-C."

    def handle(self, *args, **options):
        setup_tracing("reconciler")
        config, kafka = settings.RECONCILER, settings.KAFKA
        bridge = BridgeProgress(
            group_id=kafka["group_id"],
            topics=topics_to_read(event_topics=kafka["topics"], dlq_topic=kafka["dlq_topic"]),
            timeout=kafka["health_timeout"],
        )

        def read_downstream() -> Downstream:
            return Downstream(
                bridge_offsets=bridge.committed_offsets(),
                queued_tasks=queued_tasks(
                    broker_url=settings.CELERY_BROKER_URL,
                    queue=settings.CELERY_TASK_DEFAULT_QUEUE,
                    timeout=settings.CELERY_HEALTH_TIMEOUT,
                ),
            )

        run_reconciler(
            stop=stop_on_signals(),
            policy=RedrivePolicy(
                stuck_after=config["stuck_after"],
                event_deadline=config["event_deadline"],
                max_redrives=config["max_redrives"],
                backoff=config["redrive_backoff"],
                backoff_max=config["redrive_backoff_max"],
                max_wait_in_flight=config["max_wait_in_flight"],
                batch_size=config["batch_size"],
            ),
            read_downstream=read_downstream,
            interval=config["interval"],
            retention=dt.timedelta(days=config["retention_days"]),
            purge_batch_size=config["purge_batch_size"],
            purge_max_batches=config["purge_max_batches"],
            metrics_port=settings.METRICS["reconciler_port"],
        )
        bridge.close()
