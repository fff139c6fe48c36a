"""Raw confluent-kafka against the same broker: what the relay and the bridge sit on."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from devtools.bench.env import seed_order


def sample_value() -> bytes:
    """An ORDER_CREATED envelope like the relay's (about 600 bytes)."""
    seed = seed_order()
    order_id = str(uuid.uuid4())
    now = dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    envelope = {
        "event_id": str(uuid.uuid4()),
        "type": "ORDER_CREATED",
        "order": {
            "id": order_id,
            "user_id": seed["user_id"],
            "email": seed["email"],
            "items": [{**item, "price": f"{item['price']:.2f}"} for item in seed["items"]],
            "total_amount": "75.97",
            "status": "CREATED",
            "timestamps": {"created_at": now, "updated_at": now},
        },
        "timestamp": now,
        "metadata": {"correlation_id": str(uuid.uuid4()), "source": "order-api", "attempt": 1},
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


def create_topic(bootstrap: str, topic: str, partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)]).values():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            if "already exists" not in str(exc).lower():
                raise
    deadline = time.monotonic() + 30
    while topic not in admin.list_topics(timeout=10).topics:
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic} not visible")
        time.sleep(0.2)


def produce(*, bootstrap: str, topic: str, duration: float, max_messages: int = 300_000) -> dict[str, Any]:
    """Keyed ~600-byte messages, acks=all, idempotent (the relay's producer settings), as fast
    as librdkafka takes them for ``duration`` s or ``max_messages`` (the broker keeps them in
    memory); the rate counts confirmed deliveries."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5,
         "delivery.timeout.ms": 60000}
    )
    value = sample_value()
    state = {"delivered": 0, "failed": 0}

    def report(error, _message):
        state["failed" if error else "delivered"] += 1

    keys = [str(uuid.uuid4()).encode() for _ in range(1000)]
    sent = 0
    started = time.perf_counter()
    deadline = started + duration
    while time.perf_counter() < deadline and sent < max_messages:
        try:
            producer.produce(topic, key=keys[sent % 1000], value=value, on_delivery=report)
            sent += 1
        except BufferError:
            producer.poll(0.01)
            continue
        if sent % 500 == 0:
            producer.poll(0)
    remaining = producer.flush(60)
    elapsed = time.perf_counter() - started
    return {
        "sent": sent,
        "delivered": state["delivered"],
        "failed": state["failed"] + remaining,
        "value_bytes": len(value),
        "elapsed_s": elapsed,
        "rate": state["delivered"] / elapsed,
        "mb_per_s": state["delivered"] * len(value) / elapsed / 1e6,
    }


def consume(*, bootstrap: str, topic: str, timeout: float = 120.0) -> dict[str, Any]:
    """Everything in ``topic`` read with assign() from the beginning (no group join)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"bench-raw-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.topics[topic].partitions]
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions}
        pending = {p for p, end in ends.items() if end > 0}
        expected = sum(ends.values())
        count = 0
        started = time.perf_counter()
        consumer.assign(partitions)
        deadline = started + timeout
        while pending and time.perf_counter() < deadline:
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                if message.error():
                    continue
                count += 1
                if message.offset() + 1 >= ends[message.partition()]:
                    pending.discard(message.partition())
        elapsed = time.perf_counter() - started
        return {"expected": expected, "consumed": count, "elapsed_s": elapsed, "rate": count / elapsed,
                "complete": not pending}
    finally:
        consumer.close()
