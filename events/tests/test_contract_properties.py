"""Property-based: no input makes the contract's checks, the outbox lookup or the dead-letter
archive raise anything but a refusal with its reason."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.contract import (
    MAX_DEPTH,
    DeadLetterMessage,
    Event,
    InvalidEvent,
    build_envelope,
    check_recorded,
    parse_event,
    text_of,
)
from events.models import DeadLetter
from events.selectors import recorded_payloads
from events.services import archive_dead_letter

MAX_BYTES = 64 * 1024
# Every reason parse_event and check_recorded may give.
REASONS = {"empty", "too_large", "not_json", "too_deep", "invalid_envelope", "unknown_type", "unknown_event", "event_mismatch"}
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any JSON value, nested: what a producer can put in a message, and what the mutations below
# put in place of an envelope's fields.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**40), max_value=10**40) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)


def valid_envelope() -> dict:
    order = {
        "id": str(uuid.uuid4()),
        "user_id": "u",
        "email": "u@example.com",
        "items": [{"product_id": "p", "product_name": "W", "quantity": 1, "price": "1.00"}],
        "total_amount": "1.00",
        "status": "CREATED",
        "timestamps": {},
    }
    return build_envelope(
        event_id=uuid.uuid4(), event_type="ORDER_CREATED", order=order, correlation_id="c", occurred_at=timezone.now(), source="t"
    )


# Paths to every field of the envelope later code reads, and some it does not.
PATHS = [
    ("event_id",), ("type",), ("order",), ("timestamp",), ("metadata",), ("details",),
    ("order", "id"), ("order", "user_id"), ("order", "email"), ("order", "items"), ("order", "total_amount"),
    ("order", "status"), ("order", "timestamps"), ("order", "items", 0), ("order", "items", 0, "quantity"),
    ("order", "items", 0, "price"), ("order", "items", 0, "product_id"),
    ("metadata", "correlation_id"), ("metadata", "attempt"), ("metadata", "source"),
]  # fmt: skip


_MISSING = object()
ODD_FIELDS = [str(uuid.uuid4()).upper(), "{%s}" % uuid.uuid4(), uuid.uuid4().hex, "ORDER_PAID", 2, 0, -1, True, "2", 2**40, 10**50]


def _step(target, step):
    """``target[step]`` when the JSON has it, else _MISSING."""
    if isinstance(target, dict) and isinstance(step, str):
        return target.get(step, _MISSING)
    if isinstance(target, list) and isinstance(step, int) and step < len(target):
        return target[step]
    return _MISSING


@st.composite
def mutated_envelopes(draw) -> bytes:
    """A contract envelope with some of its fields replaced by any JSON value (or removed),
    encoded as a producer might: compact or not, NaN allowed, keys repeated."""
    envelope = valid_envelope()
    for path in draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=3)):
        target = envelope
        for step in path[:-1]:
            target = _step(target, step)
        last = path[-1]
        if not isinstance(target, dict) and _step(target, last) is _MISSING:
            continue  # an earlier replacement took the field's parent away
        if isinstance(target, dict) and draw(st.integers(0, 3)) == 0:
            target.pop(last, None)
        else:
            target[last] = draw(json_values | st.sampled_from(ODD_FIELDS))
    text = json.dumps(envelope, allow_nan=True, separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    if draw(st.booleans()) and text.startswith('{"event_id"'):
        text = '{"event_id": "%s", ' % uuid.uuid4() + text[1:]  # a duplicate key
    return text.encode()


def deep(depth: int, opener: str = "[", closer: str = "]") -> bytes:
    return (opener * depth + closer * depth).encode()


odd_values = st.sampled_from(
    [
        b'{"type": []}',
        b'{"type": {}}',
        b'{"type": null}',
        deep(2500),  # 5 KB of [[[[...]]]]
        deep(100_000),
        b'{"a":' * 3000 + b"1" + b"}" * 3000,
        b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1),
        b"1" * 5000,  # more digits than Python converts
        b"[NaN]",
        b"[Infinity, -Infinity]",
        b"1e999",
        b'"\\ud800"',
        b'{"\\udfff": 1}',
        b"\xef\xbb\xbf{}",  # a byte order mark
        '{"type": "ORDER_CREATED"}'.encode("utf-16"),
        b'{"a": 1, "a": 2}',
        b"\x00",
        b"null",
    ]
)

any_bytes = st.binary(max_size=300) | st.none() | odd_values | json_values.map(lambda v: json.dumps(v).encode()) | mutated_envelopes()


def assert_typed(event: Event) -> None:
    """Every field later code reads has the contract's type."""
    payload = event.payload
    assert str(uuid.UUID(event.event_id)) == event.event_id
    assert str(uuid.UUID(event.order_id)) == event.order_id
    assert isinstance(event.type, str) and isinstance(event.correlation_id, str)
    assert isinstance(event.attempt, int) and not isinstance(event.attempt, bool) and event.attempt >= 1
    for item in event.order["items"]:
        assert isinstance(item, dict) and type(item["quantity"]) is int
        assert all(isinstance(item[name], str) for name in ("product_id", "product_name", "price"))
    assert all(isinstance(event.order[name], str) for name in ("user_id", "email", "total_amount", "status"))
    assert isinstance(payload["metadata"]["source"], str) and isinstance(payload["timestamp"], str)
    # Plain JSON: serializes back (the Celery task arguments), with finite numbers only.
    json.dumps(payload, allow_nan=False).encode("utf-8")
    event.log_context()


@SETTINGS
@given(any_bytes)
def test_parse_event_returns_a_typed_event_or_refuses_with_a_reason(raw):
    try:
        event = parse_event(raw, max_bytes=MAX_BYTES)
    except InvalidEvent as refusal:
        assert refusal.reason in REASONS and refusal.error
        refusal.error.encode("utf-8")  # the dlq header it becomes
        assert "\x00" not in refusal.error
        return
    assert_typed(event)


@SETTINGS
@given(any_bytes, st.lists(json_values | st.builds(valid_envelope), max_size=3))
def test_check_recorded_trusts_only_a_recorded_event_and_raises_nothing_else(raw, recorded):
    try:
        event = parse_event(raw, max_bytes=MAX_BYTES)
    except InvalidEvent:
        return
    try:
        check_recorded(event, recorded=recorded)
    except InvalidEvent as refusal:
        assert refusal.reason in {"unknown_event", "event_mismatch"}
    else:
        assert event.payload in recorded
    check_recorded(event, recorded=[*recorded, json.loads(raw)])


def test_the_issue_s_poison_is_refused_with_its_reason():
    assert {
        raw: _reason(raw) for raw in (b'{"type": []}', b'{"type": {}}', deep(2500), b"[NaN]", b'{"a": 1, "a": 2}', b"1" * 5000)
    } == {
        b'{"type": []}': "unknown_type",
        b'{"type": {}}': "unknown_type",
        deep(2500): "too_deep",
        b"[NaN]": "not_json",
        b'{"a": 1, "a": 2}': "not_json",
        b"1" * 5000: "not_json",
    }
    envelope = valid_envelope()
    for field, value, reason in [
        ("event_id", 12345678901234567890123456789012, "invalid_envelope"),
        ("event_id", str(uuid.uuid4()).upper(), "invalid_envelope"),
        ("event_id", ["x"], "invalid_envelope"),
    ]:
        assert _reason(json.dumps({**envelope, field: value}).encode()) == reason
    for changes in ({"attempt": "2"}, {"attempt": 0}, {"attempt": True}, {"attempt": 2**31}):
        assert _reason(json.dumps({**envelope, "metadata": {**envelope["metadata"], **changes}}).encode()) == "invalid_envelope"
    for changes in ({"id": {"a": 1}}, {"items": ["p1"]}, {"items": [{"quantity": "1"}]}):
        assert _reason(json.dumps({**envelope, "order": {**envelope["order"], **changes}}).encode()) == "invalid_envelope"


def _reason(raw: bytes) -> str:
    with pytest.raises(InvalidEvent) as refused:
        parse_event(raw, max_bytes=MAX_BYTES)
    return refused.value.reason


# --- the dead-letter wire format and archive ---

header_lists = st.lists(st.tuples(st.text(max_size=10), st.none() | st.binary(max_size=20)), max_size=5)


@SETTINGS
@given(st.none() | st.binary(max_size=40), st.none() | header_lists, st.binary(max_size=200), st.text(max_size=20))
def test_a_dead_letter_message_travels_as_json_and_back_unchanged(key, headers, value, headers_error):
    message = DeadLetterMessage(key=key, headers=headers, value=value, headers_error=headers_error)
    argument = json.loads(json.dumps(message.as_task_argument()))  # kombu's JSON serializer
    back = DeadLetterMessage.from_task_argument(argument)
    names = [name for name, _raw in headers or []]
    assert (back.key, back.value) == (key, value)
    if headers is None:
        assert back.headers is None
    elif all(name.encode("utf-8", "replace").decode() == name and "\x00" not in name for name in names):
        assert back.headers == headers


@SETTINGS
@given(json_values)
def test_any_task_argument_gives_a_message_to_archive(argument):
    message = DeadLetterMessage.from_task_argument(argument)
    assert isinstance(message.value, bytes)


@pytest.mark.django_db
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    st.none() | st.binary(max_size=40) | st.text(max_size=20),
    st.none() | header_lists | st.dictionaries(st.text(max_size=10), st.none() | st.text(max_size=10), max_size=3),
    st.binary(max_size=200) | odd_values,
    st.text(max_size=20),
)
def test_the_archive_keeps_any_message_readable_and_exact(key, headers, value, headers_error):
    DeadLetter.objects.all().delete()  # the same headers and value archived again are the same row, whatever the key
    dead_letter = archive_dead_letter(key=key, headers=headers, value=value, headers_error=headers_error)
    dead_letter.refresh_from_db()

    assert base64.b64decode(dead_letter.original_value_b64) == value
    assert dead_letter.value == text_of(value)[0] and ("value" in dead_letter.escaped) == text_of(value)[1]
    if isinstance(key, bytes) and key:
        assert base64.b64decode(dead_letter.original_key_b64) == key
    if headers is None:
        assert dead_letter.original_headers_b64 is None and "could not be read" in dead_letter.error
    for column in ("reason", "error", "source", "original_topic", "event_id", "event_type", "key", "value"):
        assert "\x00" not in getattr(dead_letter, column)
    assert dead_letter.reason


@pytest.mark.django_db
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sets(st.text(max_size=40) | st.sampled_from(ODD_FIELDS[:3] + ["urn:uuid:%s" % uuid.uuid4()]), max_size=5))
def test_the_outbox_lookup_takes_any_ids(event_ids):
    assert recorded_payloads(event_ids=event_ids) == {}


@pytest.mark.django_db
def test_the_outbox_lookup_answers_under_the_id_as_asked():
    from events.services import enqueue_event

    order = valid_envelope()["order"]
    row = enqueue_event(event_type="ORDER_CREATED", order=order, correlation_id="c", source="t")
    row.refresh_from_db()
    odd = str(row.event_id).upper()
    assert recorded_payloads(event_ids={str(row.event_id), odd}) == {str(row.event_id): [row.payload], odd: [row.payload]}
