"""How far the work downstream of the outbox has got, read by the reconciler before it re-drives:
the bridge's consumer group's committed offsets in Kafka, and the state of the pipeline's Celery
queue (how many tasks wait, for how long, and since when its broker runs).

An event published to an offset the group has not yet committed past is still ahead of the bridge,
late rather than lost; a task may wait in a queue that holds a backlog. A re-driven copy would
only queue behind either.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import kombu
import redis
import sqlalchemy
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

    def committed_offsets(self) -> dict[tuple[str, int], int] | None:
        """The next offset the group reads, per (topic, partition) it has committed on; None
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
            return None
        return {(tp.topic, tp.partition): tp.offset for tp in committed if tp.error is None and tp.offset >= 0}

    def close(self) -> None:
        self.consumer.close()


NOT_FOUND = 404
# The header every task message carries from its publication (orders_project.celery): how long
# the oldest queued task has waited, where a broker lets it be read without taking it.
SENT_AT_HEADER = "sent_at"
REDIS_SCHEMES = ("redis://", "rediss://")
AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")
SQL_SCHEME = "sqla+"


@dataclass(frozen=True)
class QueueState:
    """A Celery queue as its broker shows it, read without taking or writing anything."""

    # Tasks waiting (taken by no worker yet); None: the broker did not answer.
    depth: int | None
    # Seconds the oldest waiting task has waited since it was published; None: empty, or the
    # broker cannot say (RabbitMQ shows a queue's head only to a consumer).
    oldest_age: float | None = None
    # When the broker last started; None: unknown. A broker that started after a task was handed
    # to it may have lost it (Redis keeps nothing across a restart unless it persists, and then
    # only up to its last save).
    broker_started_at: dt.datetime | None = None


UNKNOWN = QueueState(depth=None)


class CeleryQueues:
    """Reads Celery queues on the broker ``broker_url`` (Redis, RabbitMQ or kombu's SQL transport)."""

    def __init__(self, *, broker_url: str, timeout: float):
        self.broker_url = broker_url
        self.timeout = timeout
        self._sql_engine = None
        self._redis = None

    def read(self, *, queue: str, now: dt.datetime) -> QueueState:
        try:
            if self.broker_url.startswith(REDIS_SCHEMES):
                return self._read_redis(queue=queue, now=now)
            if self.broker_url.startswith(AMQP_SCHEMES):
                return self._read_amqp(queue=queue)
            if self.broker_url.startswith(SQL_SCHEME):
                return self._read_sql(queue=queue, now=now)
        except Exception as exc:  # noqa: BLE001 - advisory: a broker away means unknown, never a crash
            logger.warning("celery_queue_unknown", queue=queue, error=describe(exc))
            return UNKNOWN
        logger.warning("celery_queue_unknown", queue=queue, error="no reader for this broker")
        return UNKNOWN

    def _read_redis(self, *, queue: str, now: dt.datetime) -> QueueState:
        # One client for every read of the process (redis-py reconnects after a broker restart).
        if self._redis is None:
            self._redis = redis.Redis.from_url(self.broker_url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout)
        pipe = self._redis.pipeline(transaction=False)
        pipe.info("server").llen(queue).lindex(queue, -1)  # kombu pushes on the left, takes from the right
        server, depth, oldest = pipe.execute()
        started_at = now - dt.timedelta(seconds=int(server["uptime_in_seconds"]))
        return QueueState(depth=depth, oldest_age=_age(_sent_at(oldest), now), broker_started_at=started_at)

    def _read_amqp(self, *, queue: str) -> QueueState:
        with kombu.Connection(self.broker_url, connect_timeout=self.timeout) as connection:
            try:
                depth = connection.default_channel.queue_declare(queue=queue, passive=True).message_count
            except ChannelError as exc:
                if int(exc.reply_code or 0) == NOT_FOUND:  # not declared yet: nothing queued
                    return QueueState(depth=0)
                raise
        return QueueState(depth=depth)

    def _read_sql(self, *, queue: str, now: dt.datetime) -> QueueState:
        # A plain read of kombu's tables: declaring the queue through kombu would write its row.
        if self._sql_engine is None:
            self._sql_engine = sqlalchemy.create_engine(
                read_only(self.broker_url[len(SQL_SCHEME) :]), poolclass=sqlalchemy.pool.NullPool
            )
        with self._sql_engine.connect() as connection:
            if not sqlalchemy.inspect(connection).has_table("kombu_message"):
                return QueueState(depth=0)  # no worker has started on it yet
            depth = connection.execute(SQL_QUEUE_DEPTH, {"queue": queue}).scalar_one()
            oldest = connection.execute(SQL_OLDEST_MESSAGE, {"queue": queue}).scalar_one_or_none()
        return QueueState(depth=depth, oldest_age=_age(_sent_at(oldest), now))

    def close(self) -> None:
        if self._sql_engine is not None:
            self._sql_engine.dispose()
        if self._redis is not None:
            self._redis.close()


_SQL_QUEUED = "FROM kombu_message m JOIN kombu_queue q ON q.id = m.queue_id WHERE q.name = :queue AND m.visible"
SQL_QUEUE_DEPTH = sqlalchemy.text(f"SELECT COUNT(m.id) {_SQL_QUEUED}")
SQL_OLDEST_MESSAGE = sqlalchemy.text(f"SELECT m.payload {_SQL_QUEUED} ORDER BY m.id LIMIT 1")


def read_only(database_url: str) -> str:
    """SQLite opened read-only (a missing file is an error, not a new file); other databases as given."""
    prefix = "sqlite:///"
    if database_url.startswith(prefix):
        return f"{prefix}file:{database_url[len(prefix):]}?mode=ro&uri=true"
    return database_url


def _sent_at(raw: str | bytes | None) -> dt.datetime | None:
    if raw is None:
        return None
    try:
        sent_at = json.loads(raw)["headers"][SENT_AT_HEADER]
        return dt.datetime.fromtimestamp(float(sent_at), tz=dt.timezone.utc)
    except (ValueError, KeyError, TypeError):
        return None  # a message from a publisher that does not stamp it


def _age(since: dt.datetime | None, now: dt.datetime) -> float | None:
    return max(0.0, (now - since).total_seconds()) if since is not None else None
