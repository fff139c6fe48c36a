"""Property-based: no input makes the contract's checks, the outbox lookup or the dead-letter
archive raise anything but a refusal with its reason."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.harness.hostile_messages import ODD_FIELDS, REASONS, any_bytes, deep, json_values, odd_values, valid_envelope
from events.contract import (
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
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


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
    row = enqueue_event(event_type="ORDER_CREATED", order=order, correlation_id="c", source="t", name="1/ORDER_CREATED")
    row.refresh_from_db()
    odd = str(row.event_id).upper()
    assert recorded_payloads(event_ids={str(row.event_id), odd}) == {str(row.event_id): [row.payload], odd: [row.payload]}
