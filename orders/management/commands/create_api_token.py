from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Create (or show) the API token of a client, creating the client user if needed."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--staff", action="store_true", help="the client sees every order")

    def handle(self, *args, username, staff, **options):
        user, created = get_user_model().objects.get_or_create(username=username)
        if created:
            user.set_unusable_password()  # API clients use their token, not a password
        if staff and not user.is_staff:
            user.is_staff = True
        user.save()
        token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(token.key)
