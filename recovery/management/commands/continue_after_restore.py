from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from recovery.backups import BackupError, continue_after_restore


class Command(BaseCommand):
    help = (
        "Run once on a database restored by other means than restore_database (PostgreSQL's "
        "point-in-time recovery), before the stack starts: the outbox's ids go on past any the lost "
        "history used, so that webhook sequences keep growing."
    )

    def handle(self, *args, **options):
        try:
            continue_after_restore(database=settings.DATABASES["default"])
        except BackupError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write("the outbox's ids go on past any used before the restore")
