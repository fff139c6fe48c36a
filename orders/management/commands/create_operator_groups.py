from django.core.management.base import BaseCommand

from common.admin import ensure_operator_groups


class Command(BaseCommand):
    help = (
        "Create (or reset) the admin groups 'operators-readonly' (view every page of the service) and "
        "'operators' (view, and every operator action and form: cancel, refund, retry payment, retry refund, re-drive, re-publish)."
    )

    def handle(self, *args, **options):
        for group, permissions in ensure_operator_groups().items():
            self.stdout.write(f"{group}: {', '.join(permissions)}")
