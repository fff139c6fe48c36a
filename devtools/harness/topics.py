"""Reading Kafka topics as the tests check them: from the beginning, without joining a group."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from events.contract import TOPIC_PARTITIONS
from messaging.routes import TOPICS_READ

# The partitions of the topics a bridge reads.
BRIDGE_PARTITIONS = sum(TOPIC_PARTITIONS[topic] for topic in TOPICS_READ)


def read_topics(*, bootstrap_servers: str, topics: Iterable[str], timeout: float = 30.0) -> list[Any]:
    """Every message now in ``topics``, read from the beginning without joining a group."""
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": f"reader-{uuid.uuid4()}", "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(timeout=timeout)
        partitions = [
            TopicPartition(topic, partition, OFFSET_BEGINNING)
            for topic in topics
            for partition in metadata.topics[topic].partitions
        ]
        ends = {
            (tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=timeout)[1] for tp in partitions
        }
        pending = {key for key, end in ends.items() if end > 0}
        consumer.assign(partitions)
        messages = []
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=500, timeout=0.5):
                if message.error():
                    continue
                key = (message.topic(), message.partition())
                messages.append(message)
                if message.offset() + 1 >= ends[key]:
                    pending.discard(key)
        if pending:
            raise TimeoutError(f"could not read {sorted(pending)} to the end in {timeout}s")
        return messages
    finally:
        consumer.close()
