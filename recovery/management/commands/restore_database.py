from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from recovery.backups import BackupError, restore_database


class Command(BaseCommand):
    help = (
        "Replace the database (DATABASE_URL) with the backup FILE. Stop the stack first; after it, "
        "start the stack and follow the README's 'Backups and restore'."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)

    def handle(self, *args, file: Path, **options):
        try:
            restore_database(database=settings.DATABASES["default"], source=file)
        except BackupError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"database restored from {file}")
