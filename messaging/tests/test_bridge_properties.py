"""No message stops the bridge: arbitrary keys, values and headers (names that are not UTF-8,
headers without a value or with binary ones), produced to the bundled broker and read by the
bridge's own consumer, are each either handed on or sent to dlq with a reason, as a copy the
bridge reads back and archives; a good event behind them is dispatched all the same."""

from __future__ import annotations

import base64
import dataclasses
import json

import pytest
from confluent_kafka import OFFSET_END, Message, Producer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.harness.bridge import JOIN_TIMEOUT, committed, order_created, relayed, task_args, task_messages
from devtools.harness.hostile_messages import REASONS, any_bytes, deep
from devtools.harness.waiting import wait_until
from devtools.raw_producer import produce_raw
from events.contract import TOPIC_DLQ, DeadLetterMessage
from events.models import DeadLetter
from events.services import archive_dead_letter
from messaging import bridge as bridge_module
from messaging.bridge import KafkaBridge
from messaging.routes import ARCHIVE_DEAD_LETTER, PROCESS_ORDERS

pytestmark = pytest.mark.django_db

BRIDGE_REASONS = REASONS - {"event_mismatch"} | {"unreadable"}

header_names = st.binary(max_size=12).filter(lambda name: b"\x00" not in name) | st.sampled_from(
    [b"traceparent", b"dlq_reason", b"event_id", "caf\u00e9".encode()]
)
raw_messages = st.tuples(
    st.none() | st.binary(max_size=30),
    any_bytes,
    st.lists(st.tuples(header_names, st.none() | st.binary(max_size=20) | st.just(b"00-bad-trace")), max_size=4),
)


class Reader:
    """The bridge's consumer, subscribed (dlq from its end), reading on from where it is."""

    def __init__(self, bridge: KafkaBridge):
        def on_assign(consumer, partitions):
            for p in partitions:
                if p.topic == TOPIC_DLQ:
                    p.offset = OFFSET_END
            consumer.assign(partitions)

        self.bridge = bridge
        bridge.consumer.subscribe(bridge.config.topics, on_assign=on_assign)
        self.joined = False

    def read(self, *, until) -> list[Message]:
        """What the consumer reads until ``until(messages)`` holds; the first read joins the group."""
        messages: list[Message] = []

        def enough() -> bool:
            messages.extend(m for m in self.bridge.consumer.consume(num_messages=500, timeout=0.5) if not m.error())
            return until(messages)

        wait_until(enough, timeout=30 if self.joined else JOIN_TIMEOUT, interval=0, message=f"read {len(messages)} messages")
        self.joined = True
        return messages


@pytest.fixture
def reader(make_bridge, topic) -> Reader:
    """A bridge reading the test's topic and dlq."""
    return Reader(make_bridge(topics=[topic, TOPIC_DLQ]))


def as_raw(message: dict) -> tuple:
    """A message for ``relayed`` as ``produce_raw`` takes it."""
    return message["key"], message["value"], [(name.encode(), value) for name, value in message["headers"]]


def origin(message: Message) -> tuple[str, int] | None:
    """The topic and offset a dlq copy came from."""
    headers = dict(message.headers() or [])
    if "dlq_original_topic" not in headers:
        return None
    return headers["dlq_original_topic"].decode(), int(headers["dlq_original_offset"])


def handle_and_check(reader: Reader, kafka_broker, topic: str, own_celery, batch) -> list[Message]:
    """Produce ``batch`` and a good event behind it, have the bridge handle what it reads, and
    check the rule; returns the dlq copies."""
    good = order_created(0)
    good_message = relayed(good)
    produce_raw(kafka_broker.bootstrap_servers, topic, [*batch, as_raw(good_message)])
    messages = reader.read(until=lambda got: any(m.topic() == topic and m.value() == good_message["value"] for m in got))
    read = [m for m in messages if m.topic() == topic]
    assert len(read) == len(batch) + 1

    reader.bridge.handle_batch(messages)  # raises nothing

    assert committed(reader.bridge)[(topic, 0)] == read[-1].offset() + 1, "committed past every message"
    tasks = task_messages(own_celery)
    assert [task_args(t) for t in tasks if t.headers["task"] == PROCESS_ORDERS] == [[[good.payload]]], "the good event went on"
    # The bridge reads its own copies back: each readable, with its reason.
    wanted = {(topic, m.offset()) for m in read[:-1]}
    copies = [
        m
        for m in reader.read(until=lambda got: {origin(m) for m in got if m.topic() == TOPIC_DLQ} >= wanted)
        if m.topic() == TOPIC_DLQ and origin(m) in wanted
    ]
    assert len(copies) == len(batch), "every other message went to dlq, once"
    for copy in copies:
        headers = copy.headers()  # readable: names UTF-8
        assert all(value is not None for _name, value in headers)
        text = {name: value.decode("utf-8") for name, value in headers}  # every value UTF-8 text
        assert text["dlq_reason"] in BRIDGE_REASONS, text
        assert text["dlq_error"] and text["dlq_source"] == "kafka-bridge"
    return copies


def archive_copies(reader: Reader, own_celery, copies: list[Message]) -> list[DeadLetter]:
    """The bridge handles its dlq copies: it queues their archive tasks, which are run here."""
    reader.bridge.handle_batch(copies)
    archived = []
    for task in task_messages(own_celery):
        assert task.headers["task"] == ARCHIVE_DEAD_LETTER
        [argument] = task_args(task)
        message = DeadLetterMessage.from_task_argument(argument)
        archived.append(
            archive_dead_letter(key=message.key, headers=message.headers, value=message.value, headers_error=message.headers_error)
        )
    assert len(archived) == len(copies)
    return archived


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=st.lists(raw_messages, min_size=4, max_size=10))
def test_any_message_is_dispatched_or_dead_lettered_and_the_bridge_goes_on(kafka_broker, topic, reader, own_celery, batch):
    copies = handle_and_check(reader, kafka_broker, topic, own_celery, batch)
    for dead_letter in archive_copies(reader, own_celery, copies):
        assert dead_letter.reason in BRIDGE_REASONS
        assert dead_letter.original_topic == topic


def test_the_issue_s_poison_goes_to_dlq_with_readable_headers(kafka_broker, topic, reader, own_celery):
    poison = [
        (None, b'{"type": []}', []),
        (b"k", b'{"type": {}}', [(b"a", None)]),
        (None, deep(2500), [(b"binary", b"\xff\xfe")]),
        (None, b"{}", [(b"\xff\xfename", b"x")]),  # a header name that is not UTF-8
        (b"\xff", b"not json", [(b"dlq_reason", b"forged"), (b"traceparent", None)]),
    ]
    copies = handle_and_check(reader, kafka_broker, topic, own_celery, poison)

    by_offset = {origin(c)[1]: c for c in copies}
    first = min(by_offset)
    headers = [{name: value.decode() for name, value in by_offset[first + index].headers()} for index in range(len(poison))]
    assert [h["dlq_reason"] for h in headers] == ["unknown_type", "unknown_type", "too_deep", "unreadable", "not_json"]
    assert json.loads(headers[1]["dlq_original_headers_b64"]) == [["a", None]]
    assert json.loads(headers[2]["dlq_original_headers_b64"]) == [["binary", base64.b64encode(b"\xff\xfe").decode()]]
    assert "SystemError" in headers[3]["dlq_original_headers_unreadable"]
    assert json.loads(headers[4]["dlq_original_headers_b64"]) == [
        ["dlq_reason", base64.b64encode(b"forged").decode()],
        ["traceparent", None],
    ]
    assert by_offset[first + 4].key() == b"\xff" and by_offset[first + 2].value() == deep(2500), "key and value unchanged"

    archived = {row.value[:20]: row for row in archive_copies(reader, own_celery, copies)}
    row = archived['{"type": {}}']
    assert (row.reason, row.key, json.loads(row.headers["dlq_original_headers_b64"])) == ("unknown_type", "k", [["a", None]])
    assert archived["not json"].key == "\\xff" and archived["not json"].escaped == ["key"]


def test_a_copy_too_large_for_dlq_goes_there_as_a_record_of_it(kafka_broker, topic, reader, own_celery):
    """A value over the bridge's limit and over what its dlq producer may send (1,000,000 bytes)."""
    reader.bridge.config = dataclasses.replace(reader.bridge.config, max_event_bytes=1000)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers, "message.max.bytes": 2_000_000})
    producer.produce(topic, key=b"big", value=b"x" * 1_000_100)
    assert producer.flush(30) == 0
    [big] = [m for m in reader.read(until=lambda got: any(m.topic() == topic for m in got)) if m.topic() == topic]

    reader.bridge.handle_batch([big])

    assert committed(reader.bridge)[(topic, 0)] == big.offset() + 1
    [copy] = [m for m in reader.read(until=lambda got: any(origin(m) == (topic, big.offset()) for m in got)) if origin(m)]
    headers = {name: value.decode() for name, value in copy.headers()}
    assert (headers["dlq_reason"], copy.key(), copy.value() or b"") == ("too_large", None, b"")
    assert headers["dlq_omitted"] == "key of 3 bytes, value of 1000100 bytes, 0 headers: too large for dlq"


def test_a_bug_of_the_bridge_on_one_message_sends_that_message_to_dlq_and_spares_the_rest(
    kafka_broker, topic, reader, own_celery, monkeypatch
):
    """Our own check failing on one event (a bug, simulated), and the batch's outbox lookup
    failing otherwise than with the database away: the event the bug hits goes to dlq as
    ``internal_error``, the others are looked up one by one and go on."""
    victim, spared = order_created(0), order_created(1)
    real_check, real_lookup = bridge_module.check_recorded, bridge_module.recorded_payloads

    def buggy_check(event, *, recorded):
        if event.event_id == str(victim.event_id):
            raise ZeroDivisionError("a bug")
        return real_check(event, recorded=recorded)

    def lookup_failing_for_batches(*, event_ids):
        if len(event_ids) > 1:
            raise TypeError("a bug of the batch query")
        return real_lookup(event_ids=event_ids)

    monkeypatch.setattr(bridge_module, "check_recorded", buggy_check)
    monkeypatch.setattr(bridge_module, "recorded_payloads", lookup_failing_for_batches)
    produced = [relayed(victim), relayed(spared)]
    produce_raw(kafka_broker.bootstrap_servers, topic, [as_raw(m) for m in produced])
    read = [m for m in reader.read(until=lambda got: sum(m.topic() == topic for m in got) == 2) if m.topic() == topic]

    reader.bridge.handle_batch(read)

    assert committed(reader.bridge)[(topic, 0)] == read[-1].offset() + 1
    assert [task_args(t) for t in task_messages(own_celery) if t.headers["task"] == PROCESS_ORDERS] == [[[spared.payload]]]
    refused = (topic, read[0].offset())
    [copy] = [m for m in reader.read(until=lambda got: any(origin(m) == refused for m in got)) if origin(m) == refused]
    headers = {name: value.decode() for name, value in copy.headers()}
    assert (headers["dlq_reason"], headers["dlq_error"]) == ("internal_error", "ZeroDivisionError: a bug")
    assert copy.value() == produced[0]["value"]
