"""The bridge's check of incoming messages against the event contract."""

from __future__ import annotations

import json
import uuid

import pytest
from django.utils import timezone

from events.contract import Event, InvalidEvent, build_envelope, check_recorded, parse_event

MAX_BYTES = 4096


def envelope(**changes) -> dict:
    order = {
        "id": str(uuid.uuid4()),
        "user_id": "u",
        "email": "u@example.com",
        "items": [],
        "total_amount": "1.00",
        "status": "CREATED",
        "timestamps": {},
    }
    event = build_envelope(
        event_id=uuid.uuid4(),
        event_type="ORDER_CREATED",
        order=order,
        correlation_id="c",
        occurred_at=timezone.now(),
        source="test",
    )
    event.update(changes)
    return event


def test_a_contract_envelope_parses():
    event = envelope()
    parsed = parse_event(json.dumps(event).encode(), max_bytes=MAX_BYTES)

    assert parsed == Event(event)
    assert (parsed.event_id, parsed.order_id, parsed.correlation_id, parsed.attempt) == (
        event["event_id"], event["order"]["id"], "c", 1
    )


@pytest.mark.parametrize(
    "raw, reason",
    [
        (None, "empty"),
        (b"", "empty"),
        (b"x" * (MAX_BYTES + 1), "too_large"),
        (b"{not json", "not_json"),
        (b"\xff\xfe\x00", "not_json"),
        (b"[1, 2]", "invalid_envelope"),
        (json.dumps(envelope(type="ORDER_SHIPPED")).encode(), "unknown_type"),
        (json.dumps(envelope(event_id="nope")).encode(), "invalid_envelope"),
        (json.dumps(envelope(order={"id": "x"})).encode(), "invalid_envelope"),
        (json.dumps(envelope(metadata={})).encode(), "invalid_envelope"),
        (json.dumps(envelope())[:-5].encode(), "not_json"),
    ],
)
def test_bad_messages_are_refused_with_a_reason(raw, reason):
    with pytest.raises(InvalidEvent) as refused:
        parse_event(raw, max_bytes=MAX_BYTES)
    assert refused.value.reason == reason
    assert refused.value.error


def test_unknown_event_type_cannot_be_built():
    with pytest.raises(ValueError):
        build_envelope(
            event_id=uuid.uuid4(), event_type="NOPE", order={}, correlation_id="c", occurred_at=timezone.now(), source="s"
        )



def test_only_an_event_the_outbox_recorded_exactly_is_trusted():
    payload = {"event_id": "6f1c4c52-8d7e-4b53-9d55-0d6f1b1c2a11", "type": "ORDER_CREATED", "order": {"email": "a@example.com"}}

    check_recorded(Event(payload), recorded=[{"other": 1}, dict(payload)])
    with pytest.raises(InvalidEvent) as unknown:
        check_recorded(Event(payload), recorded=[])
    with pytest.raises(InvalidEvent) as altered:
        check_recorded(Event({**payload, "order": {"email": "b@example.net"}}), recorded=[payload])

    assert (unknown.value.reason, altered.value.reason) == ("unknown_event", "event_mismatch")
