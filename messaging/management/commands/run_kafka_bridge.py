from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from common.lifecycle import stop_on_signals
from common.tracing import setup_tracing
from messaging.bridge import BridgeSettings, KafkaBridge
from messaging.kafka import KafkaAccessError
from messaging.routes import TOPICS_READ


class Command(BaseCommand):
    help = "The Kafka bridge: consume the event topics in the consumer group and start their Celery tasks."

    def handle(self, *args, **options):
        setup_tracing("bridge")
        kafka, bridge = settings.KAFKA, settings.BRIDGE
        config = BridgeSettings(
            topics=list(TOPICS_READ),
            group_id=kafka["group_id"],
            batch_size=bridge["batch_size"],
            poll_timeout=bridge["poll_timeout"],
            fetch_wait_ms=bridge["fetch_wait_ms"],
            max_event_bytes=bridge["max_event_bytes"],
            max_backoff=settings.OUTBOX["max_backoff"],
            delivery_timeout_ms=settings.OUTBOX["delivery_timeout_ms"],
            metrics_port=settings.METRICS["bridge_port"],
        )
        try:
            KafkaBridge(config=config, stop=stop_on_signals()).run()
        except KafkaAccessError as exc:
            raise CommandError(str(exc)) from None
