"""One trace per order: the POST /orders request, the relay's publish, the bridge's dispatch,
every task and their database calls, received by a real OTLP/HTTP receiver; and nothing at all
while tracing is off."""

from __future__ import annotations

import gzip
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace import TracerProvider

from common.tracing import setup_tracing
from devtools.broker import free_port
from devtools.harness.audit import wait_for_completion
from devtools.harness.process_group import ProcessGroup
from devtools.harness.sample_orders import create_test_order, post_order
from devtools.harness.waiting import wait_until
from events.models import OutboxEvent
from events.contract import ORDER_EVENTS

TASKS = ("orders.process_orders", "payments.charge_payments", "notifications.send_notifications_batch")


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    links: tuple[tuple[str, str], ...]
    attributes: dict = field(hash=False)


def _value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class OtlpReceiver:
    """An OTLP/HTTP trace receiver: POST /v1/traces with application/x-protobuf bodies, decoded
    with the official opentelemetry-proto messages."""

    def __init__(self):
        self.spans: list[ReceivedSpan] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_error(404)
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.add(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, request: ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            service=resource["service.name"],
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                        )
                    )
        with self.lock:
            self.spans.extend(received)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self.lock:
            return [span for span in self.spans if span.trace_id == trace_id]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def traced_system(django_db_setup, django_db_blocker, kafka_broker, tmp_path_factory):
    """web, relay, bridge, worker (and the reconciler) exporting their spans to a receiver."""
    receiver = OtlpReceiver()
    group, port = ProcessGroup.with_web_port(
        kafka_brokers=kafka_broker.bootstrap_servers,
        work_dir=tmp_path_factory.mktemp("traced"),
        TRACING_OTLP_ENDPOINT=receiver.url,
        TRACING_EXPORT_DELAY_MS="100",
    )
    try:
        with django_db_blocker.unblock():
            group.start_system(port=port)
            yield group, receiver
    finally:
        group.stop_all()
        receiver.stop()


def _trace_parent(row: OutboxEvent) -> tuple[str, str]:
    """The trace id and parent span id of the context an outbox row recorded."""
    _version, trace_id, span_id, _flags = row.trace_context["traceparent"].split("-")
    return trace_id, span_id


def _ancestors(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> list[ReceivedSpan]:
    found = []
    while span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        found.append(span)
    return found


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_one_order_is_one_trace_through_web_relay_bridge_and_worker(traced_system):
    system, receiver = traced_system
    order_id = post_order(system.base_url, user_id=f"traced_{uuid.uuid4().hex[:6]}")
    wait_for_completion([order_id])
    rows = list(OutboxEvent.objects.filter(key=order_id))
    created = next(row for row in rows if row.event_type == "ORDER_CREATED")
    trace_id, request_span_id = _trace_parent(created)
    # Every event of the order, whichever process recorded it, was recorded in the order's trace.
    assert {_trace_parent(row)[0] for row in rows} == {trace_id}

    # NOTIFICATION_SENT is published for other consumers: the bridge reads the rest.
    read_by_bridge = [row for row in rows if row.event_type in ORDER_EVENTS]

    def publish_span_of(row: OutboxEvent, spans: list[ReceivedSpan]) -> ReceivedSpan | None:
        return next((s for s in spans if s.attributes.get("messaging.message.id") == str(row.event_id)), None)

    def bridge_span_of(row: OutboxEvent, spans: list[ReceivedSpan]) -> ReceivedSpan | None:
        publish = publish_span_of(row, spans)
        processed = [s for s in spans if publish and s.service == "bridge" and s.parent_span_id == publish.span_id]
        return processed[0] if processed else None

    def whole_trace():
        spans = receiver.trace(trace_id)
        span_ids = {s.span_id for s in spans}
        # A parent ends, hence is exported, after its children: wait until none is missing.
        roots = [s.span_id for s in spans if s.parent_span_id not in span_ids]
        runs = {s.name for s in spans if s.service == "worker"}
        everything_published = all(publish_span_of(row, spans) for row in rows)
        everything_processed = all(bridge_span_of(row, spans) for row in read_by_bridge)
        whole = (
            roots == [request_span_id]
            and everything_published
            and everything_processed
            and {f"run/{task}" for task in TASKS} <= runs
        )
        return spans if whole else None

    spans = wait_until(whole_trace, timeout=30, interval=0.2, message="the order's trace did not arrive whole")
    by_id = {span.span_id: span for span in spans}

    # The POST's server span is the root (whole_trace waited until every other span hangs from it).
    request = by_id[request_span_id]
    assert (request.service, request.kind, request.parent_span_id) == ("web", Span.SPAN_KIND_SERVER, "")
    assert request.attributes.get("http.request.method", request.attributes.get("http.method")) == "POST"
    assert {"web", "relay", "bridge", "worker"} <= {s.service for s in spans}

    # Each event: the relay's publish span (producer) is a child of the context the row recorded,
    # and the bridge's process span (consumer) a child of the publish span.
    for row in rows:
        publish = publish_span_of(row, spans)
        assert (publish.service, publish.kind, publish.name) == ("relay", Span.SPAN_KIND_PRODUCER, f"publish {row.topic}")
        assert publish.parent_span_id == _trace_parent(row)[1]
        processed = bridge_span_of(row, spans)
        if row in read_by_bridge:
            assert (processed.kind, processed.name) == (Span.SPAN_KIND_CONSUMER, f"process {row.topic}")
        else:
            assert processed is None

    # The order's chain runs in the worker under the bridge's span for the chains of its batch,
    # linked to the ORDER_CREATED it serves.
    created_published = publish_span_of(created, spans)
    for task in ("orders.process_orders", "payments.charge_payments"):
        run = next(s for s in spans if s.name == f"run/{task}")
        assert (run.service, run.kind) == ("worker", Span.SPAN_KIND_CONSUMER)
        batch = next(s for s in _ancestors(run, by_id) if s.name == "dispatch order chains")
        assert batch.service == "bridge" and (trace_id, created_published.span_id) in batch.links
    # The notification tasks under the bridge's batch span, linked to the messages it serves.
    for run in (s for s in spans if s.name == "run/notifications.send_notifications_batch"):
        batch = next(s for s in _ancestors(run, by_id) if s.name == "dispatch notifications")
        assert batch.service == "bridge" and batch.links and all(link[0] == trace_id for link in batch.links)

    # The database calls of the request and of the tasks.
    database_calls = [s for s in spans if s.kind == Span.SPAN_KIND_CLIENT and ("db.system" in s.attributes or "db.system.name" in s.attributes)]
    assert {"web", "worker"} <= {s.service for s in database_calls}

    # The worker's log lines carry the trace, with the span they were written in.
    traced_lines = [line for line in system.log_events("worker") if line.get("trace_id") == trace_id]
    assert any(line["span_id"] in by_id for line in traced_lines)


def test_tracing_is_off_unless_an_endpoint_is_configured(settings):
    settings.TRACING = {**settings.TRACING, "otlp_endpoint": ""}
    middleware = list(settings.MIDDLEWARE)
    assert setup_tracing("web") is False
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert settings.MIDDLEWARE == middleware


@pytest.mark.django_db
def test_an_outbox_row_keeps_the_trace_context_it_was_recorded_in():
    untraced = create_test_order(user_id="u", email="u@example.com", correlation_id="untraced")
    assert OutboxEvent.objects.get(key=untraced.id).trace_context == {}

    span = TracerProvider().get_tracer(__name__).start_span("request")
    with trace.use_span(span, end_on_exit=True):
        traced = create_test_order(user_id="t", email="t@example.com", correlation_id="traced")
    context = span.get_span_context()
    assert OutboxEvent.objects.get(key=traced.id).trace_context == {
        "traceparent": f"00-{trace.format_trace_id(context.trace_id)}-{trace.format_span_id(context.span_id)}-{context.trace_flags:02x}"
    }
