"""The idempotent producer the relay and the bridge's dlq publish with, and how its delivery
reports are read: what counts as confirmed, and which errors only a new producer gets past."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message, Producer

from messaging.kafka import client_config


def build_producer(*, delivery_timeout_ms: int) -> Producer:
    """An idempotent producer: no duplicates or reordering from its own retries."""
    return Producer(
        client_config(
            **{
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "delivery.timeout.ms": delivery_timeout_ms,
            }
        )
    )


# Errors after which an idempotent producer cannot go on (a broker that restarted may no longer
# know its producer id): only a new producer can publish again.
PRODUCER_RESET_ERRORS = frozenset(
    {KafkaError._FATAL, KafkaError.PRODUCER_FENCED, KafkaError.UNKNOWN_PRODUCER_ID, KafkaError.INVALID_PRODUCER_EPOCH}
)


def needs_new_producer(error: KafkaError) -> bool:
    return error.fatal() or error.code() in PRODUCER_RESET_ERRORS


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


@dataclass
class Deliveries:
    """What Kafka answered for a batch of messages, each known by a key of the caller's: where it
    put each confirmed one, why each other one failed, and whether the producer must be replaced."""

    confirmed: dict[Hashable, tuple[int, int]] = field(default_factory=dict)  # key: (partition, offset)
    failed: dict[Hashable, str] = field(default_factory=dict)  # key: error
    producer_broken: bool = False

    def report_for(self, key: Hashable) -> Callable[[KafkaError | None, Message], None]:
        """The ``on_delivery`` callback of the message known as ``key``."""

        def report(error: KafkaError | None, message: Message) -> None:
            error = delivery_error(error, message)
            if error is None:
                self.confirmed[key] = (message.partition(), message.offset())
            else:
                self.failed[key] = str(error)
                self.producer_broken |= needs_new_producer(error)

        return report

    def fail_unanswered(self, keys: Iterable[Hashable], *, error: str) -> None:
        """Count every one of ``keys`` that got no answer as failed with ``error``."""
        self.failed.update(dict.fromkeys((key for key in keys if key not in self.confirmed and key not in self.failed), error))
