from django.core.management.base import BaseCommand, CommandError

from events.contract import TOPIC_PARTITIONS
from messaging.kafka import KafkaAccessError
from messaging.topics import ensure_topics


class Command(BaseCommand):
    help = "Create the Kafka topics of the event contract that do not exist yet (safe to run again)."

    def handle(self, *args, **options):
        try:
            created = ensure_topics()
        except KafkaAccessError as exc:
            raise CommandError(str(exc)) from None
        for name, partitions in TOPIC_PARTITIONS.items():
            state = "created" if name in created else "exists"
            self.stdout.write(f"{name}: {partitions} partitions, {state}")
