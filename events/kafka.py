"""Kafka client configuration shared by the relay, the bridge and the health checks."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka.admin import AdminClient
from django.conf import settings

# librdkafka's own log lines go through the standard library, so they come out as JSON too.
client_logger = logging.getLogger("kafka.client")


def client_config(**overrides: Any) -> dict[str, Any]:
    return {
        "bootstrap.servers": ",".join(settings.KAFKA["brokers"]),
        "client.id": settings.KAFKA["client_id"],
        "logger": client_logger,
        **overrides,
    }


def check_broker(*, timeout: float) -> int:
    """Fetch cluster metadata; returns the number of brokers or raises ``KafkaException``."""
    metadata = AdminClient(client_config()).list_topics(timeout=timeout)
    return len(metadata.brokers)
