"""The trace context of an order through Kafka (README "Tracing").

The relay's ``publish`` span (producer) has the context its outbox row recorded as parent, and
its own context goes into the message headers (``traceparent``, ``tracestate``): the message's
creation context. The bridge's ``process`` span (consumer) takes that context as parent, as the
messaging conventions allow for a span that processes one message, so the order's trace goes on
through the tasks the bridge starts inside it.

Made with the OpenTelemetry API's tracer and W3C propagator rather than
opentelemetry-instrumentation-confluent-kafka: that library injects the *current* context at
``produce()``, while the relay publishes the context stored with each row, and its ``consume()``
span covers a whole batch and stays current until the next call, so the messages of one batch,
each of its own order, would share one parent instead of each continuing its own trace.

Without a tracer provider (tracing off) the tracer is the API's no-op: a message without trace
headers costs a look at its headers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from events.services import W3C_TRACE_CONTEXT
from messaging.kafka import Received

TRACE_HEADERS = W3C_TRACE_CONTEXT.fields

tracer = trace.get_tracer(__name__)


def _attributes(*, operation: str, operation_type: str, topic: str, key: str | bytes | None) -> dict[str, str]:
    attributes = {
        "messaging.system": "kafka",
        "messaging.operation.name": operation,
        "messaging.operation.type": operation_type,
        "messaging.destination.name": topic,
    }
    if key:
        attributes["messaging.kafka.message.key"] = key.decode(errors="replace") if isinstance(key, bytes) else key
    return attributes


def start_publish(*, topic: str, key: str, event_id: str, trace_context: dict[str, str]) -> tuple[Span | None, list[tuple[str, bytes]]]:
    """The publish span of one outbox row and the trace headers its message carries; no span and
    no headers for a row recorded outside any trace."""
    if not trace_context:
        return None, []
    span = tracer.start_span(
        f"publish {topic}",
        context=W3C_TRACE_CONTEXT.extract(trace_context),
        kind=SpanKind.PRODUCER,
        attributes={**_attributes(operation="publish", operation_type="send", topic=topic, key=key), "messaging.message.id": event_id},
    )
    carrier: dict[str, str] = {}
    W3C_TRACE_CONTEXT.inject(carrier, context=trace.set_span_in_context(span))
    # A relay without tracing still passes the recorded context on.
    return span, [(name, value.encode()) for name, value in (carrier or trace_context).items()]


def end_publish(span: Span, *, error: str | None) -> None:
    """End a publish span once the broker confirmed the message or ``error`` says why not."""
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()


def _creation_context(received: Received):
    """The context that created the message (its publish span's); None if it carries none that
    is valid, or none that can be read (headers the client cannot decode, a header without a value)."""
    carrier = {
        name: value.decode(errors="replace")
        for name, value in received.headers or ()
        if name in TRACE_HEADERS and value is not None
    }
    if not carrier:
        return None
    context = W3C_TRACE_CONTEXT.extract(carrier)
    return context if trace.get_current_span(context).get_span_context().is_valid else None


@contextlib.contextmanager
def processing(received: Received) -> Iterator[None]:
    """The bridge's work on one message (its tasks published) inside the message's trace."""
    context = _creation_context(received)
    message = received.message
    if context is None:
        yield
        return
    attributes = _attributes(operation="process", operation_type="process", topic=message.topic(), key=message.key())
    attributes.update({"messaging.destination.partition.id": str(message.partition()), "messaging.kafka.offset": message.offset()})
    with tracer.start_as_current_span(f"process {message.topic()}", context=context, kind=SpanKind.CONSUMER, attributes=attributes):
        yield


@contextlib.contextmanager
def processing_batch(messages: Sequence[Received], *, name: str) -> Iterator[None]:
    """Work done once for several messages (a batch's notification tasks): linked to each
    message's trace, and part of the first one's, so a lone order's trace holds all its tasks."""
    contexts = [context for context in map(_creation_context, messages) if context is not None]
    if not contexts:
        yield
        return
    links = [Link(trace.get_current_span(context).get_span_context()) for context in contexts]
    attributes = {"messaging.system": "kafka", "messaging.batch.message_count": len(messages)}
    with tracer.start_as_current_span(name, context=contexts[0], kind=SpanKind.CONSUMER, links=links, attributes=attributes):
        yield
