from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from common.lifecycle import stop_on_signals
from common.tracing import setup_tracing
from messaging.kafka import KafkaAccessError
from messaging.relay import run_relay


class Command(BaseCommand):
    help = "The outbox relay: publish outbox events to Kafka until SIGTERM or Ctrl-C."

    def handle(self, *args, **options):
        setup_tracing("relay")
        outbox = settings.OUTBOX
        try:
            run_relay(
                stop=stop_on_signals(),
                batch_size=outbox["batch_size"],
                poll_interval=outbox["poll_interval"],
                idle_poll_interval=outbox["idle_poll_interval"],
                max_backoff=outbox["max_backoff"],
                delivery_timeout_ms=outbox["delivery_timeout_ms"],
                metrics_port=settings.METRICS["relay_port"],
            )
        except KafkaAccessError as exc:
            raise CommandError(str(exc)) from None
