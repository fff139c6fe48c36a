import datetime as dt

from django.conf import settings
from django.core.management.base import BaseCommand

from common.lifecycle import stop_on_signals
from common.tracing import setup_tracing
from messaging.progress import BridgeProgress, queued_tasks
from messaging.routes import TOPICS_READ
from recovery.reconciler import run_reconciler
from recovery.selectors import Downstream, RedrivePolicy


# Seconds a pass waits for the bridge's committed offsets or the Celery queue's length before it
# goes on without them (then nothing counts as in flight).
BROKER_READ_TIMEOUT = 2.0
# Rows examined per query while looking for unfinished events.
SCAN_BATCH_SIZE = 500
# Rows deleted per statement, and statements per pass, when purging history past its retention:
# short transactions, and a backlog cleared over several passes.
PURGE_BATCH_SIZE = 1000
PURGE_MAX_BATCHES = 10


class Command(BaseCommand):
    help = "The reconciler: re-drive stuck orders and unhandled events from the database until SIGTERM or Ctrl-C."

    def handle(self, *args, **options):
        setup_tracing("reconciler")
        config, kafka = settings.RECONCILER, settings.KAFKA
        bridge = BridgeProgress(
            group_id=kafka["group_id"],
            topics=list(TOPICS_READ),
            timeout=BROKER_READ_TIMEOUT,
        )

        def read_downstream() -> Downstream:
            return Downstream(
                bridge_offsets=bridge.committed_offsets(),
                queued_tasks=queued_tasks(
                    broker_url=settings.CELERY_BROKER_URL,
                    queue=settings.CELERY_TASK_DEFAULT_QUEUE,
                    timeout=BROKER_READ_TIMEOUT,
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
                batch_size=SCAN_BATCH_SIZE,
            ),
            read_downstream=read_downstream,
            interval=config["interval"],
            retention=dt.timedelta(days=config["retention_days"]),
            purge_batch_size=PURGE_BATCH_SIZE,
            purge_max_batches=PURGE_MAX_BATCHES,
            metrics_port=settings.METRICS["reconciler_port"],
        )
        bridge.close()
