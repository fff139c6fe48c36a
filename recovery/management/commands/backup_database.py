from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from recovery.backups import BackupError, backup_database


class Command(BaseCommand):
    help = "Write a consistent backup of the database (DATABASE_URL) to FILE, while the stack runs."

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)

    def handle(self, *args, file: Path, **options):
        try:
            backup_database(database=settings.DATABASES["default"], target=file)
        except BackupError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"backup written to {file} ({file.stat().st_size} bytes)")
