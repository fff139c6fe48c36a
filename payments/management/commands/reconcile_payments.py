import datetime as dt
import json

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from payments import selectors
from payments.gateway import ProviderRecords, get_gateway


class Command(BaseCommand):
    help = (
        "Compare the payment provider's charges and refunds with the database: one JSON line for each "
        "the database does not know (kind, the provider's reference, the order it was for)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--days",
            type=float,
            default=None,
            help="How far back to look at the provider's records, in days (default: reconciler.provider_check_days, "
            "as the reconciler's check).",
        )

    def handle(self, *args, days: float | None, **options):
        if days is None:
            days = settings.RECONCILER["provider_check_days"]
        gateway = get_gateway()
        if not isinstance(gateway, ProviderRecords):
            raise CommandError(f"{type(gateway).__name__} cannot list the provider's records (payments.gateway.ProviderRecords)")
        records = gateway.money_moved(since=timezone.now() - dt.timedelta(days=days))
        found = selectors.unreconciled_money(records=records)
        for item in found:
            self.stdout.write(json.dumps(item.as_line()))
        self.stderr.write(f"{len(records)} charges and refunds at the provider, {len(found)} unknown to the database")
