"""Liveness and readiness against real components."""

from __future__ import annotations

import pytest
from django.db import OperationalError

from devtools.broker import free_port
from orders_project import health

pytestmark = pytest.mark.django_db


def test_liveness(client):
    response = client.get("/health")

    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_ready_when_database_kafka_and_celery_broker_answer(client, kafka_settings):
    response = client.get("/health/ready")

    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ready"
    assert {name: check["status"] for name, check in body["checks"].items()} == {
        "database": "ok",
        "kafka": "ok",
        "celery_broker": "ok",
    }


def test_degraded_but_serving_when_kafka_is_unreachable(client, settings):
    # Orders still go into the outbox; the relay publishes them when Kafka is back.
    settings.KAFKA = {**settings.KAFKA, "brokers": [f"127.0.0.1:{free_port()}"], "health_timeout": 0.5}

    response = client.get("/health/ready/")

    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "degraded"
    assert body["checks"]["kafka"]["status"] == "down"
    assert body["checks"]["kafka"]["error"]
    assert body["checks"]["database"]["status"] == "ok"


def test_degraded_when_celery_broker_is_unreachable(client, kafka_settings, settings):
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{free_port()}/0"
    settings.CELERY_HEALTH_TIMEOUT = 0.5

    response = client.get("/health/ready")

    body = response.json()
    assert (response.status_code, body["status"]) == (200, "degraded")
    assert body["checks"]["celery_broker"]["status"] == "down"
    assert body["checks"]["kafka"]["status"] == "ok"


def test_not_ready_when_the_database_is_unreachable(client, kafka_settings, monkeypatch):
    def database_down():
        raise OperationalError("connection refused")

    monkeypatch.setitem(health.READINESS_CHECKS, "database", database_down)

    response = client.get("/health/ready")

    body = response.json()
    assert (response.status_code, body["status"]) == (503, "not_ready")
    assert body["checks"]["database"] == {"status": "down", "error": "OperationalError: connection refused"}
