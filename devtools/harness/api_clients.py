"""API clients the tests use: each with a token of its own, as ``create_api_token`` makes them."""

from __future__ import annotations

import os

from django.core.management import call_command
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient


def client_with_token(username: str, *, staff: bool = False) -> APIClient:
    call_command("create_api_token", username, *(["--staff"] if staff else []), stdout=open(os.devnull, "w"))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get(user__username=username).key}")
    return client
