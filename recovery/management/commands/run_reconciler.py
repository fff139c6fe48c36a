import datetime as dt

from django.conf import settings
from django.core.management.base import BaseCommand
from django.utils import timezone

from common.lifecycle import stop_on_signals
from common.tracing import setup_tracing
from messaging.progress import BridgeProgress, CeleryQueues
from messaging.routes import TOPICS_READ
from recovery.downstream import DownstreamWatch, publish_queue_gauges
from recovery.reconciler import ProviderCheck, run_reconciler
from recovery.selectors import Downstream, RedrivePolicy


# Seconds a pass waits for the bridge's committed offsets or a Celery queue's state before it goes
# on without them (then what they would have said is unknown).
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

        celery_queues = CeleryQueues(broker_url=settings.CELERY_BROKER_URL, timeout=BROKER_READ_TIMEOUT)
        pipeline_queue = settings.CELERY_TASK_DEFAULT_QUEUE
        watch = DownstreamWatch()

        def read_downstream() -> Downstream:
            now = timezone.now()
            offsets = bridge.committed_offsets()
            queues = {name: celery_queues.read(queue=name, now=now) for name in (pipeline_queue, settings.WEBHOOKS["queue"])}
            publish_queue_gauges(queues=queues)
            return watch.observe(bridge_offsets=offsets, pipeline_queue=queues[pipeline_queue], now=now)

        run_reconciler(
            stop=stop_on_signals(),
            policy=RedrivePolicy(
                stuck_after=config["stuck_after"],
                event_deadline=config["event_deadline"],
                max_redrives=config["max_redrives"],
                backoff=config["redrive_backoff"],
                backoff_max=config["redrive_backoff_max"],
                max_wait_in_flight=config["max_wait_in_flight"],
                stalled_after=config["stalled_after"],
                batch_size=SCAN_BATCH_SIZE,
            ),
            read_downstream=read_downstream,
            interval=config["interval"],
            retention=dt.timedelta(days=config["retention_days"]),
            purge_batch_size=PURGE_BATCH_SIZE,
            purge_max_batches=PURGE_MAX_BATCHES,
            metrics_port=settings.METRICS["reconciler_port"],
            provider_check=ProviderCheck(
                interval=config["provider_check_interval"],
                lookback=dt.timedelta(days=config["provider_check_days"]),
            ),
        )
        bridge.close()
        celery_queues.close()
