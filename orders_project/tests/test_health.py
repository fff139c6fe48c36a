"""Liveness, readiness and /metrics against real components; who may ask for the last two."""

from __future__ import annotations

import pytest
from django.db import OperationalError
from structlog.testing import capture_logs

from devtools.broker import free_port
from orders.models import Order, OrderStatus
from orders_project import health

pytestmark = pytest.mark.django_db

TOKEN = "internal-token-" + "x" * 32


def test_liveness(client):
    response = client.get("/health")

    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_ready_when_database_kafka_and_celery_broker_answer(client, kafka_settings):
    response = client.get("/health/ready")

    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "kafka": "ok", "celery_broker": "ok"}}


def test_degraded_but_serving_when_kafka_is_unreachable(client, settings, monkeypatch):
    # Orders still go into the outbox; the relay publishes them when Kafka is back.
    unreachable = f"127.0.0.1:{free_port()}"
    settings.KAFKA = {**settings.KAFKA, "brokers": [unreachable]}
    monkeypatch.setattr(health, "BROKER_CHECK_TIMEOUT", 0.5)

    with capture_logs() as logs:
        response = client.get("/health/ready/")

    body = response.json()
    assert (response.status_code, body["status"]) == (200, "degraded")
    assert body["checks"]["kafka"] == "unavailable"
    assert body["checks"]["database"] == "ok"
    # Statuses only: why (hosts, users, the client's words) is in the log.
    assert unreachable not in response.content.decode()
    (failure,) = [line for line in logs if line["event"] == "readiness_check_failed"]
    assert failure["check"] == "kafka" and failure["error"]


def test_degraded_when_celery_broker_is_unreachable(client, kafka_settings, settings, monkeypatch):
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setattr(health, "BROKER_CHECK_TIMEOUT", 0.5)

    response = client.get("/health/ready")

    body = response.json()
    assert (response.status_code, body["status"]) == (200, "degraded")
    assert body["checks"] == {"database": "ok", "kafka": "ok", "celery_broker": "unavailable"}


def test_not_ready_when_the_database_is_unreachable(client, kafka_settings, monkeypatch):
    def database_down():
        raise OperationalError('connection to server at "db.internal" failed for user "orders"')

    monkeypatch.setitem(health.READINESS_CHECKS, "database", database_down)

    with capture_logs() as logs:
        response = client.get("/health/ready")

    assert response.status_code == 503
    assert response.json() == {"status": "not_ready", "checks": {"database": "unavailable", "kafka": "ok", "celery_broker": "ok"}}
    assert "db.internal" not in response.content.decode()
    assert any("db.internal" in line.get("error", "") for line in logs)


def test_a_flood_of_probes_costs_one_round_of_checks(client, kafka_settings, monkeypatch):
    calls = []
    for name, check in health.READINESS_CHECKS.items():
        monkeypatch.setitem(health.READINESS_CHECKS, name, lambda name=name, check=check: (calls.append(name), check()))

    answers = {client.get("/health/ready").status_code for _ in range(50)}

    assert answers == {200}
    assert sorted(calls) == sorted(health.READINESS_CHECKS)


def test_the_orders_gauge_is_read_at_most_every_couple_of_seconds(client, django_assert_num_queries):
    client.get("/metrics")
    with django_assert_num_queries(0):
        for _ in range(20):
            assert client.get("/metrics").status_code == 200


def test_metrics_count_orders_by_status(client):
    Order.objects.create(user_id="u", email="u@example.com", status=OrderStatus.PAID, total_amount="1.00")

    body = client.get("/metrics").content.decode()

    assert 'orders{status="PAID"} 1.0' in body
    assert "outbox_backlog" in body


# --- who may ask -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/metrics", "/health/ready"])
def test_with_a_token_set_internal_endpoints_want_it(client, settings, kafka_settings, path):
    settings.INTERNAL_TOKEN = TOKEN

    for authorization in (None, "Bearer wrong", f"Token {TOKEN}", f"Bearer {TOKEN}x", "Bearer", "Bearer é"):
        headers = {"HTTP_AUTHORIZATION": authorization} if authorization else {}
        refused = client.get(path, **headers)
        assert refused.status_code == 401, authorization
        assert refused["WWW-Authenticate"] == 'Bearer realm="internal"'
        assert refused.json()["error"].startswith("Authentication required")

    assert client.get(path, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    assert client.get(path, HTTP_AUTHORIZATION=f"bearer {TOKEN}").status_code == 200


@pytest.mark.parametrize("path", ["/metrics", "/health/ready"])
def test_production_without_a_token_does_not_serve_them(client, settings, path):
    settings.PRODUCTION = True
    settings.INTERNAL_TOKEN = ""

    response = client.get(path, HTTP_AUTHORIZATION="Bearer anything")

    assert response.status_code == 404
    assert response.json() == {"error": f"Not found: {path}"}


def test_production_with_a_token_serves_them_to_its_holder(client, settings):
    settings.PRODUCTION = True
    settings.INTERNAL_TOKEN = TOKEN

    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


def test_liveness_stays_open_with_a_token_set_and_in_production(client, settings):
    settings.PRODUCTION = True
    settings.INTERNAL_TOKEN = TOKEN

    assert client.get("/health", HTTP_AUTHORIZATION="Token forged").status_code == 200
