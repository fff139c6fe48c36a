from django.core.management.base import BaseCommand

from events.contract import TOPIC_PARTITIONS
from messaging.topics import ensure_topics


class Command(BaseCommand):
    help = "Create the Kafka topics of the event contract that do not exist yet (safe to run again)."

    def handle(self, *args, **options):
        created = ensure_topics()
        for name, partitions in TOPIC_PARTITIONS.items():
            state = "created" if name in created else "exists"
            self.stdout.write(f"{name}: {partitions} partitions, {state}")
