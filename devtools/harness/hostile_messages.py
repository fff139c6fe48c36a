"""Messages anyone may write to a topic, as hypothesis strategies: any JSON value, contract
envelopes with fields replaced or removed, bytes that are no JSON at all, deep nesting. The
contract's and the bridge's property tests throw them at the parse-check-route path."""

from __future__ import annotations

import json
import uuid

from django.utils import timezone
from hypothesis import strategies as st

from events.contract import MAX_DEPTH, build_envelope

# Every reason parse_event and check_recorded may give.
REASONS = {"empty", "too_large", "not_json", "too_deep", "invalid_envelope", "unknown_type", "unknown_event", "event_mismatch"}

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
