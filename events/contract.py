"""The event contract (docs/design.md): event types, their topics, the JSON envelope and its checks."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import reprlib
import uuid
from dataclasses import dataclass
from typing import Any

ORDER_CREATED = "ORDER_CREATED"
ORDER_PROCESSING = "ORDER_PROCESSING"
ORDER_PAID = "ORDER_PAID"
PAYMENT_FAILED = "PAYMENT_FAILED"
ORDER_CANCELLED = "ORDER_CANCELLED"
REFUND_REQUESTED = "REFUND_REQUESTED"
ORDER_REFUNDED = "ORDER_REFUNDED"
REFUND_FAILED = "REFUND_FAILED"
NOTIFICATION_SENT = "NOTIFICATION_SENT"
# Not an order event: the type of outbox rows bound for the dead-letter topic.
DEAD_LETTER = "DEAD_LETTER"

TOPIC_ORDERS = "orders"
TOPIC_PAYMENTS = "payments"
TOPIC_NOTIFICATIONS = "notifications"
TOPIC_DLQ = "dlq"

# Events the customer is told of, each once per enabled channel.
CUSTOMER_EVENTS = (ORDER_CREATED, ORDER_PROCESSING, ORDER_PAID, PAYMENT_FAILED, ORDER_CANCELLED, ORDER_REFUNDED)
# Events about one refund: ``details.refund`` names it (``Event.refund_id``).
REFUND_EVENTS = (REFUND_REQUESTED, ORDER_REFUNDED, REFUND_FAILED)
# Events about an order that the pipeline acts on or the customer is told of. NOTIFICATION_SENT
# is an announcement for other consumers.
ORDER_EVENTS = (*CUSTOMER_EVENTS, REFUND_REQUESTED, REFUND_FAILED)

EVENT_TOPICS = {
    ORDER_CREATED: TOPIC_ORDERS,
    ORDER_PROCESSING: TOPIC_ORDERS,
    ORDER_PAID: TOPIC_PAYMENTS,
    PAYMENT_FAILED: TOPIC_PAYMENTS,
    ORDER_CANCELLED: TOPIC_ORDERS,
    REFUND_REQUESTED: TOPIC_PAYMENTS,
    ORDER_REFUNDED: TOPIC_PAYMENTS,
    REFUND_FAILED: TOPIC_PAYMENTS,
    NOTIFICATION_SENT: TOPIC_NOTIFICATIONS,
}

TOPIC_PARTITIONS = {TOPIC_ORDERS: 3, TOPIC_PAYMENTS: 3, TOPIC_NOTIFICATIONS: 3, TOPIC_DLQ: 1}


def isoformat(moment: dt.datetime) -> str:
    """UTC timestamps as in the contract: ``2026-01-01T10:30:00Z``."""
    return moment.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def build_envelope(
    *,
    event_id: uuid.UUID,
    event_type: str,
    order: dict[str, Any],
    correlation_id: str,
    occurred_at: dt.datetime,
    source: str,
    attempt: int = 1,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON envelope; ``details`` adds a type-specific object (a notification's channel, say)."""
    if event_type not in EVENT_TOPICS:
        raise ValueError(f"Unknown event type {event_type!r}")
    envelope = {
        "event_id": str(event_id),
        "type": event_type,
        "order": order,
        "timestamp": isoformat(occurred_at),
        "metadata": {"correlation_id": correlation_id, "source": source, "attempt": attempt},
    }
    if details:
        envelope["details"] = details
    return envelope


@dataclass(frozen=True)
class Event:
    """A contract event. ``payload`` is its JSON envelope exactly as the outbox recorded it: what
    Kafka messages and Celery task arguments carry."""

    payload: dict[str, Any]

    @property
    def event_id(self) -> str:
        return self.payload["event_id"]

    @property
    def type(self) -> str:
        return self.payload["type"]

    @property
    def order(self) -> dict[str, Any]:
        return self.payload["order"]

    @property
    def order_id(self) -> str:
        return self.payload["order"]["id"]

    @property
    def correlation_id(self) -> str:
        return self.payload["metadata"]["correlation_id"]

    @property
    def refund(self) -> dict[str, Any]:
        """The refund a refund event is about (``REFUND_EVENTS``): its ``id``, ``amount``, ``reason``."""
        return self.payload["details"]["refund"]

    @property
    def attempt(self) -> int:
        """1 for an order's first round; an operator's payment retry counts up from 2."""
        return self.payload["metadata"].get("attempt", 1)

    def log_context(self) -> dict[str, str]:
        """The ids every log line about this event carries."""
        return {"event_id": self.event_id, "order_id": self.order_id, "correlation_id": self.correlation_id}


def message_headers(*, event_type: str, event_id: str, correlation_id: str) -> dict[str, str]:
    """The Kafka headers every event carries."""
    return {"event_type": event_type, "event_id": event_id, "correlation_id": correlation_id}


def dead_letter_headers(*, reason: str, error: str, source: str, **origin: Any) -> dict[str, str]:
    """Headers of a dlq message: why it is there and where it came from.

    The message value is the original bytes, untouched, so it can be fixed and re-published.
    """
    headers = {"dlq_reason": reason, "dlq_error": error[:MAX_ERROR_CHARS], "dlq_source": source}
    headers.update({f"dlq_original_{name}": str(value) for name, value in origin.items() if value is not None})
    return {name: safe_text(value) for name, value in headers.items()}


def safe_text(text: str) -> str:
    """``text`` as any reader can take it (a Kafka header, a log line, a PostgreSQL column): lone
    surrogates escaped (``\\udc80``), NUL as ``\\x00``."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def text_of(raw: bytes) -> tuple[str, bool]:
    """Bytes as text for people to read, and whether they had to be escaped: UTF-8 text without
    NUL as it is; anything else in Python's bytes notation (``\\xff``, ``\\x00``, a backslash
    doubled), unambiguous and itself plain text."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and "\x00" not in text:
        return text, False
    # A backslash byte never occurs inside a multi-byte UTF-8 sequence: doubling it first keeps
    # the escapes backslashreplace adds apart from the original's own backslashes.
    escaped = raw.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
    return escaped, True


class InvalidEvent(Exception):
    """A message the bridge cannot handle; ``reason`` is a short code for the dlq headers,
    ``error`` says why in safe text (see ``safe_text``) of at most MAX_ERROR_CHARS."""

    def __init__(self, reason: str, error: str):
        error = safe_text(error)[:MAX_ERROR_CHARS]
        super().__init__(f"{reason}: {error}")
        self.reason = reason
        self.error = error


MAX_ERROR_CHARS = 2000
# Nesting of JSON arrays and objects an event may have. Contract events nest 4 deep (envelope,
# order, items, item); a deeper document is refused before anything walks it recursively
# (json.loads itself, dict comparison, the Celery serializer).
MAX_DEPTH = 32
# The highest attempt number: what the payments table's attempt column holds.
MAX_ATTEMPT = 2**31 - 1


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} is out of range")
    return number


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        duplicate = next(name for name, _value in pairs if name in seen or seen.add(name))
        raise ValueError(f"duplicate key {duplicate!r}"[:300])
    return obj


# Lone surrogates reach a decoded string only through \\u escapes (strict UTF-8 has none).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def decode_json(raw: bytes) -> Any:
    """Strict JSON of UTF-8 bytes: no NaN or Infinity, no duplicate keys, no number out of range,
    no lone surrogate, at most MAX_DEPTH deep; anything else raises ``InvalidEvent``
    (``not_json``, ``too_deep``)."""
    try:
        text = raw.decode("utf-8")
        document = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise InvalidEvent("too_deep", f"nested deeper than the interpreter can parse (limit {MAX_DEPTH})") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of too many digits, the hooks'
        raise InvalidEvent("not_json", str(exc)) from None
    _check_tree(document, strings=_SURROGATE_ESCAPE.search(text) is not None)
    return document


def _check_tree(document: Any, *, strings: bool) -> None:
    """The depth of a decoded document, and with ``strings`` each string (keys too), walked
    without recursion."""
    pending = [(document, 1)] if isinstance(document, (dict, list)) else []
    if strings and isinstance(document, str):
        _require_text(document)
    while pending:
        node, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise InvalidEvent("too_deep", f"nested more than {MAX_DEPTH} deep")
        if strings and isinstance(node, dict):
            for name in node:
                _require_text(name)
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, (dict, list)):
                pending.append((child, depth + 1))
            elif strings and isinstance(child, str):
                _require_text(child)


def _require_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidEvent("not_json", f"string with a lone surrogate: {text[:80]!r}") from None


_ENVELOPE = {"event_id": str, "type": str, "order": dict, "timestamp": str, "metadata": dict}
_ORDER = {"id": str, "user_id": str, "email": str, "items": list, "total_amount": str, "status": str}
_ITEM = {"product_id": str, "product_name": str, "quantity": int, "price": str}
_METADATA = {"correlation_id": str, "source": str}
_REFUND = {"id": str, "amount": str, "reason": str}


def _require_fields(obj: dict[str, Any], fields: dict[str, type], where: str) -> None:
    for name, kind in fields.items():
        value = obj.get(name)
        # bool is an int to Python, not to the contract.
        if not isinstance(value, kind) or isinstance(value, bool):
            raise InvalidEvent("invalid_envelope", f"{where}{name} must be a {kind.__name__}, got {_describe(value)}")


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"[:120] if isinstance(value, (str, int, float)) else type(value).__name__


def _require_uuid(value: str, name: str) -> None:
    """A UUID in the form this service writes (lowercase, hyphenated): the outbox lookup and the
    comparison with the recorded payload see exactly the id the message carries."""
    try:
        canonical = str(uuid.UUID(value))
    except ValueError:
        canonical = None
    if canonical != value:
        raise InvalidEvent("invalid_envelope", f"{name} is not a canonical UUID: {value!r}"[:300])


def parse_event(raw: bytes | None, *, max_bytes: int) -> Event:
    """Decode and check a message value against the envelope; raises ``InvalidEvent``.

    Total: any bytes give either an ``Event`` whose every field later code reads has its type
    (ids canonical UUID strings, ``type`` a contract type, ``order.items`` a list of item
    objects, ``metadata.attempt`` a positive int when present), or ``InvalidEvent`` with a reason.
    """
    if not raw:
        raise InvalidEvent("empty", "message has no value")
    if len(raw) > max_bytes:
        raise InvalidEvent("too_large", f"{len(raw)} bytes, limit {max_bytes}")
    envelope = decode_json(raw)
    if not isinstance(envelope, dict):
        raise InvalidEvent("invalid_envelope", f"expected a JSON object, got {_describe(envelope)}")
    event_type = envelope.get("type")
    if not isinstance(event_type, str) or event_type not in EVENT_TOPICS:
        raise InvalidEvent("unknown_type", f"event type {_describe(event_type)}")
    _require_fields(envelope, _ENVELOPE, "")
    _require_uuid(envelope["event_id"], "event_id")
    order = envelope["order"]
    _require_fields(order, _ORDER, "order.")
    _require_uuid(order["id"], "order.id")
    for index, item in enumerate(order["items"]):
        if not isinstance(item, dict):
            raise InvalidEvent("invalid_envelope", f"order.items[{index}] must be an object, got {_describe(item)}")
        _require_fields(item, _ITEM, f"order.items[{index}].")
    if not isinstance(order.get("timestamps", {}), dict):
        raise InvalidEvent("invalid_envelope", "order.timestamps must be an object")
    metadata = envelope["metadata"]
    _require_fields(metadata, _METADATA, "metadata.")
    attempt = metadata.get("attempt", 1)
    if not isinstance(attempt, int) or isinstance(attempt, bool) or not 1 <= attempt <= MAX_ATTEMPT:
        raise InvalidEvent(
            "invalid_envelope", f"metadata.attempt must be an integer from 1 to {MAX_ATTEMPT}, got {_describe(attempt)}"
        )
    details = envelope.get("details", {})
    if not isinstance(details, dict):
        raise InvalidEvent("invalid_envelope", "details must be an object")
    if event_type in REFUND_EVENTS:
        refund = details.get("refund")
        if not isinstance(refund, dict):
            raise InvalidEvent("invalid_envelope", f"details.refund must be an object, got {_describe(refund)}")
        _require_fields(refund, _REFUND, "details.refund.")
        _require_uuid(refund["id"], "details.refund.id")
    return Event(envelope)


Headers = list[tuple[str, bytes | None]]


@dataclass(frozen=True)
class DeadLetterMessage:
    """A dlq message on its way to the archive (the ``events.archive_dead_letter`` task): its
    bytes exactly. ``headers`` None: the Kafka client could not read them (``headers_error``)."""

    key: bytes | None
    headers: Headers | None
    value: bytes
    headers_error: str = ""

    def as_task_argument(self) -> dict[str, Any]:
        """The task's JSON argument. Bytes travel base64: ``key_b64`` (null: no key),
        ``headers_b64`` ([name, base64 value or null] in order; null: unreadable), ``value_b64``.
        ``key`` and ``headers`` are their text too, what a worker of the previous release reads."""
        return {
            "key": text_of(self.key)[0] if self.key else None,
            "headers": {safe_text(name): text_of(raw)[0] if raw is not None else "" for name, raw in self.headers or []},
            "value_b64": _b64(self.value),
            "key_b64": _b64(self.key) if self.key is not None else None,
            "headers_b64": None
            if self.headers is None
            else [[safe_text(name), None if raw is None else _b64(raw)] for name, raw in self.headers],
            "headers_error": safe_text(self.headers_error),
        }

    @classmethod
    def from_task_argument(cls, argument: Any) -> DeadLetterMessage:
        """Back from the task's argument, whichever release wrote it; what does not decode is
        taken as the text it is, so that any argument gives a message to archive."""
        if not isinstance(argument, dict):
            return cls(key=None, headers=None, value=_bytes(argument) or b"", headers_error="not a dead-letter task argument")
        key = _unb64(argument["key_b64"]) if "key_b64" in argument else _bytes(argument.get("key"))
        if "headers_b64" in argument:
            listed = argument["headers_b64"]
            pairs = listed if isinstance(listed, list) else []
            headers = None if listed is None else [(_text(pair[0]), _unb64(pair[1])) for pair in pairs if _pair(pair)]
        else:
            given = argument.get("headers")
            headers = [(_text(name), _bytes(value)) for name, value in given.items()] if isinstance(given, dict) else []
        return cls(
            key=key,
            headers=headers,
            value=_unb64(argument.get("value_b64")) or b"",
            headers_error=_text(argument.get("headers_error") or ""),
        )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: Any) -> bytes | None:
    """Base64 text back to bytes; anything else, or text that is not base64, as its own bytes."""
    if text is None:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (TypeError, ValueError):
        return _bytes(text)


def _bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return _text(value).encode("utf-8", "surrogatepass")


def _text(value: Any) -> str:
    """A string as it is; anything else as a bounded repr (reprlib stops at a few levels)."""
    return value if isinstance(value, str) else reprlib.repr(value)


def _pair(pair: Any) -> bool:
    return isinstance(pair, (list, tuple)) and len(pair) == 2


def check_recorded(event: Event, *, recorded: list[dict[str, Any]]) -> None:
    """Raise ``InvalidEvent`` unless ``event`` is an event this service wrote: one of
    ``recorded``, the payloads its outbox holds under the event's id. Writing to a topic does not
    make a message trusted: handlers act only on events the database vouches for."""
    if not recorded:
        raise InvalidEvent("unknown_event", f"no event {event.event_id} in the outbox: not written by this service")
    if event.payload not in recorded:
        raise InvalidEvent(
            "event_mismatch", f"event {event.event_id} differs from what the outbox recorded under its id"
        )
