"""Kafka client configuration shared by the relay, the bridge and the health checks."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, Message
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


def delivery_error(error: KafkaError | None, message: Message) -> KafkaError | None:
    """The error of a delivery report, counting a delivery without an offset as failed.

    With acks=all, no offset means the broker answered a retried batch as a duplicate of one it
    already had. A restarted broker can answer so for a batch it never stored (the bundled
    broker does), so the message is sent again; consumers' inboxes drop the copy if the first
    one was stored after all.
    """
    if error is None and message.offset() is None:
        return KafkaError(KafkaError.DUPLICATE_SEQUENCE_NUMBER, "confirmed as a duplicate without an offset: sending again")
    return error
