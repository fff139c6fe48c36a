"""Fixtures shared by every app's tests."""

from __future__ import annotations

import copy

import pytest
from rest_framework.test import APIClient

from events.embedded_broker import EmbeddedKafkaBroker

SEED_ORDER = {
    "user_id": "customer_123",
    "email": "customer@example.com",
    "items": [
        {"product_id": "prod_001", "product_name": "Premium Widget", "quantity": 2, "price": 29.99},
        {"product_id": "prod_002", "product_name": "Standard Widget", "quantity": 1, "price": 15.99},
    ],
}


@pytest.fixture
def seed_order() -> dict:
    """The request body of the seed's curl example."""
    return copy.deepcopy(SEED_ORDER)


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """A real Kafka-protocol broker process on a free port, for the whole test session."""
    broker = EmbeddedKafkaBroker(log_path=tmp_path_factory.mktemp("kafka") / "broker.log")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def kafka_settings(settings, kafka_broker):
    """Point the Django settings at the test broker."""
    settings.KAFKA = {**settings.KAFKA, "brokers": [kafka_broker.bootstrap_servers]}
    return settings.KAFKA
