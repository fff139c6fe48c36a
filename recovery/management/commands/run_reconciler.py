import datetime as dt

from django.conf import settings
from django.core.management.base import BaseCommand

from common.lifecycle import stop_on_signals
from common.tracing import setup_tracing
from recovery.reconciler import run_reconciler
from recovery.selectors import RedrivePolicy


class Command(BaseCommand):
    help = "The reconciler: re-drive stuck orders and unhandled events from the database until SIGTERM or Ctrl-C."

    def handle(self, *args, **options):
        setup_tracing("reconciler")
        config = settings.RECONCILER
        run_reconciler(
            stop=stop_on_signals(),
            policy=RedrivePolicy(
                stuck_after=config["stuck_after"],
                event_deadline=config["event_deadline"],
                max_redrives=config["max_redrives"],
                backoff=config["redrive_backoff"],
                backoff_max=config["redrive_backoff_max"],
                batch_size=config["batch_size"],
            ),
            interval=config["interval"],
            retention=dt.timedelta(days=config["retention_days"]),
            purge_batch_size=config["purge_batch_size"],
            purge_max_batches=config["purge_max_batches"],
            metrics_port=settings.METRICS["reconciler_port"],
        )
