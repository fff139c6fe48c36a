"""API security: token authentication, per-client visibility, throttling, production guards."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from devtools.harness.api_clients import client_with_token
from orders.models import Order
from orders_project.config import BASE_DIR

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_throttle_counters():
    cache.clear()
    yield
    cache.clear()


def test_open_by_default(api_client, seed_order):
    assert api_client.post("/orders", seed_order, format="json").status_code == 201
    assert api_client.get("/orders").status_code == 200


def test_without_a_token_every_order_endpoint_is_refused(auth_required, api_client, seed_order):
    order = Order.objects.create(user_id="x", email="x@example.com", total_amount=1)
    bad_token = APIClient()
    bad_token.credentials(HTTP_AUTHORIZATION="Token not-a-token")

    for client in (api_client, bad_token):
        assert client.post("/orders", seed_order, format="json").status_code == 401
        assert client.get("/orders").status_code == 401
        assert client.get(f"/orders/{order.id}").status_code == 401
        assert client.get(f"/orders/{order.id}/events").status_code == 401
    assert Order.objects.count() == 1
    # Probes stay open.
    assert api_client.get("/health").status_code == 200


def test_a_client_sees_only_its_own_orders_and_staff_see_all(auth_required, seed_order):
    alice, bob, staff = client_with_token("alice"), client_with_token("bob"), client_with_token("ops", staff=True)
    alice_order = alice.post("/orders", seed_order, format="json").json()["order_id"]
    bob_order = bob.post("/orders", seed_order, format="json").json()["order_id"]

    assert [o["id"] for o in alice.get("/orders").json()["results"]] == [alice_order]
    assert alice.get(f"/orders/{alice_order}").status_code == 200
    for path in (f"/orders/{bob_order}", f"/orders/{bob_order}/status", f"/orders/{bob_order}/events"):
        assert alice.get(path).status_code == 404  # not 403: another client's order is not disclosed
    assert {o["id"] for o in staff.get("/orders").json()["results"]} == {alice_order, bob_order}
    assert Order.objects.get(pk=alice_order).owner.username == "alice"


def test_idempotency_keys_belong_to_each_client(auth_required, seed_order):
    alice, bob = client_with_token("alice"), client_with_token("bob")

    first = alice.post("/orders", seed_order, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    replay = alice.post("/orders", seed_order, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    other_client = bob.post("/orders", seed_order, format="json", HTTP_IDEMPOTENCY_KEY="k-1")

    assert replay.json()["order_id"] == first.json()["order_id"]
    assert other_client.json()["order_id"] != first.json()["order_id"]
    assert Order.objects.count() == 2


def test_anonymous_clients_are_throttled(settings, api_client, seed_order):
    settings.API = {**settings.API, "throttle_anon": "3/minute"}

    statuses = [api_client.get("/orders").status_code for _ in range(4)]

    assert statuses == [200, 200, 200, 429]


def test_token_clients_are_throttled_per_client(settings, auth_required):
    settings.API = {**settings.API, "throttle_user": "2/minute"}
    alice, bob = client_with_token("alice"), client_with_token("bob")

    assert [alice.get("/orders").status_code for _ in range(3)] == [200, 200, 429]
    assert bob.get("/orders").status_code == 200


def _check_with(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=BASE_DIR,
        env={**os.environ, "DATABASE_URL": "sqlite:///:memory:", **env},
        capture_output=True,
        text=True,
    )


# What production needs besides the key (orders_project/tests/test_security.py tests each refusal).
PRODUCTION_REQUIREMENTS = {
    "HTTP_ALLOWED_HOSTS": "orders.example.com",
    "EMAIL_HOST": "smtp.example.com",
    "PAYMENTS_ALLOW_SIMULATOR": "true",
}


@pytest.mark.parametrize(
    "env, refusal",
    [
        ({"DJANGO_DEBUG": "true", "DJANGO_SECRET_KEY": secrets.token_urlsafe(50)}, "DJANGO_DEBUG must be false"),
        ({"DJANGO_DEBUG": "false"}, "Set DJANGO_SECRET_KEY"),
        ({"DJANGO_DEBUG": "false", "DJANGO_SECRET_KEY": "short"}, "Set DJANGO_SECRET_KEY"),
    ],
)
def test_production_settings_refuse_debug_and_a_default_secret_key(env, refusal):
    result = _check_with(ENVIRONMENT="production", **PRODUCTION_REQUIREMENTS, **env)

    assert result.returncode != 0
    assert refusal in result.stderr


def test_production_settings_start_with_a_real_key_and_require_auth():
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", "from django.conf import settings; print(settings.API_REQUIRE_AUTH)"],
        cwd=BASE_DIR,
        env={
            **os.environ,
            **PRODUCTION_REQUIREMENTS,
            "ENVIRONMENT": "production",
            "DJANGO_DEBUG": "false",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
            "DATABASE_URL": "sqlite:///:memory:",
        },
        capture_output=True,
        text=True,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "True"
