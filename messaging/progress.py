"""How far the work downstream of the outbox has got, read by the reconciler before it re-drives:
the bridge's consumer group's committed offsets in Kafka, and the tasks waiting in the pipeline's
Celery queue.

An event published to an offset the group has not yet committed past is still ahead of the bridge,
late rather than lost; a task may wait in a queue that holds a backlog. A re-driven copy would
only queue behind either.
"""

from __future__ import annotations

import kombu
import structlog
from confluent_kafka import Consumer, TopicPartition
from kombu.exceptions import ChannelError

from common.errors import describe
from messaging.kafka import client_config

logger = structlog.get_logger(__name__)


class BridgeProgress:
    """Reads the committed offsets of the consumer group ``group_id`` without joining it."""

    def __init__(self, *, group_id: str, topics: list[str], timeout: float):
        self.topics = topics
        self.timeout = timeout
        self.consumer = Consumer(client_config(**{"group.id": group_id, "enable.auto.commit": False}))

    def committed_offsets(self) -> dict[tuple[str, int], int]:
        """The next offset the group reads, per (topic, partition) it has committed on; empty
        when Kafka does not answer in time (the reconciler then cannot tell late from lost)."""
        try:
            metadata = self.consumer.list_topics(timeout=self.timeout)
            partitions = [
                TopicPartition(topic, partition)
                for topic in self.topics
                if topic in metadata.topics
                for partition in metadata.topics[topic].partitions
            ]
            committed = self.consumer.committed(partitions, timeout=self.timeout)
        except Exception as exc:  # noqa: BLE001 - advisory: "unknown" is a safe answer, a crash is not
            logger.warning("bridge_progress_unknown", error=describe(exc))
            return {}
        return {(tp.topic, tp.partition): tp.offset for tp in committed if tp.error is None and tp.offset >= 0}

    def close(self) -> None:
        self.consumer.close()


NOT_FOUND = 404


# Brokers whose passive queue declaration only reads. kombu's SQL transport creates the queue's
# row instead, racing the workers that create it at their start: it is not asked.
READ_ONLY_DECLARE = ("redis://", "rediss://", "amqp://", "amqps://", "pyamqp://")


def queued_tasks(*, broker_url: str, queue: str, timeout: float) -> int | None:
    """Tasks waiting in the Celery queue ``queue`` (taken by no worker yet); None when the broker
    does not answer, or is not asked."""
    if not broker_url.startswith(READ_ONLY_DECLARE):
        return None
    try:
        with kombu.Connection(broker_url, connect_timeout=timeout, transport_options={"max_retries": 0}) as connection:
            return connection.default_channel.queue_declare(queue=queue, passive=True).message_count
    except ChannelError as exc:
        if int(exc.reply_code or 0) == NOT_FOUND:  # a drained queue's key is gone (Redis)
            return 0
        logger.warning("celery_queue_unknown", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - advisory: a broker away, or a transport's race, means unknown
        logger.warning("celery_queue_unknown", error=describe(exc))
    return None
