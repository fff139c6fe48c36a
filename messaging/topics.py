"""Topic setup through the Kafka admin client: create what is missing, leave the rest."""

from __future__ import annotations

import threading

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic
from django.conf import settings

from common.lifecycle import backoff_delays
from events.contract import TOPIC_PARTITIONS
from messaging.kafka import KafkaAccessError, cluster_metadata

logger = structlog.get_logger(__name__)


def ensure_topics(*, timeout: float = 10.0) -> list[str]:
    """Create the contract's topics that do not exist; returns the names created."""
    admin, metadata = cluster_metadata(timeout=timeout)
    existing = metadata.topics
    missing = [
        NewTopic(name, num_partitions=partitions, replication_factor=settings.KAFKA["replication_factor"])
        for name, partitions in TOPIC_PARTITIONS.items()
        if name not in existing
    ]
    if not missing:
        return []
    created = []
    for name, future in admin.create_topics(missing, operation_timeout=timeout, request_timeout=timeout).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            # Another process created it between our listing and our request.
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    logger.info("kafka_topics_created", topics=created)
    return created


def ensure_topics_until_ready(*, stop: threading.Event, max_backoff: float) -> bool:
    """Keep trying ``ensure_topics`` while Kafka is unreachable; False if asked to stop first.
    A broker that refuses the client raises ``KafkaAccessError`` at once: no retry cures that."""
    for delay in backoff_delays(start=0.5, ceiling=max_backoff):
        if stop.wait(delay):
            return False
        try:
            ensure_topics(timeout=5.0)
            return True
        except KafkaAccessError as exc:
            logger.error("kafka_access_refused", error=str(exc))
            raise
        except KafkaException as exc:
            logger.warning("kafka_unavailable", error=str(exc), retry_in=min(max_backoff, max(0.5, delay * 2)))
    return False
