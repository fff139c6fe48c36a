"""OpenTelemetry for one process: one trace per order.

The POST /orders request starts the trace (Django's instrumentation); its context is stored with
each outbox row (``events.services.enqueue_event``), the relay's publish span continues it and
puts it in the Kafka headers, the bridge's span continues it from there and Celery's
instrumentation carries it in the task headers to the worker, whose tasks' events take it on to
the relay again. psycopg's (or sqlite3's) instrumentation adds the database calls.

Off unless ``tracing.otlp_endpoint`` is set: then nothing here is imported or installed, and the
code that propagates context only asks the OpenTelemetry API's no-op for the current span.

Here, below every app, so that each process's start (web's WSGI module, the worker's
``worker_init``, the relay's, bridge's and reconciler's commands) can call ``setup_tracing``.

Only web starts traces (at ``tracing.sample_ratio``); the other processes record spans only
inside a trace that reached them. Their loops would otherwise start a trace per poll query.
"""

from __future__ import annotations

_installed = False


def setup_tracing(process: str) -> bool:
    """Install tracing for ``process`` (web, relay, bridge, worker, reconciler) if configured;
    True if it was. Call once, early, in the process that serves (after any fork)."""
    global _installed
    from django.conf import settings

    if _installed or not settings.TRACING["otlp_endpoint"]:
        return _installed
    _install_provider(process, settings.TRACING, namespace=settings.SERVICE_NAME, environment=settings.ENVIRONMENT)
    _instrument(process, database_engine=settings.DATABASES["default"]["ENGINE"])
    _installed = True
    return True


def _install_provider(process: str, config: dict, *, namespace: str, environment: str) -> None:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased

    root_sampler = TraceIdRatioBased(config["sample_ratio"]) if process == "web" else ALWAYS_OFF
    resource = Resource.create(
        {
            "service.name": config["service_name"] or process,
            "service.namespace": namespace,
            "deployment.environment.name": environment,
        }
    )
    provider = TracerProvider(resource=resource, sampler=ParentBased(root=root_sampler))
    exporter = OTLPSpanExporter(endpoint=f"{config['otlp_endpoint'].rstrip('/')}/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=config["export_delay_ms"]))
    # The provider flushes its spans at exit (its own atexit hook).
    trace.set_tracer_provider(provider)


def _instrument(process: str, *, database_engine: str) -> None:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    if process == "web":
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        # Probes and scrapes are not orders: no traces for them.
        DjangoInstrumentor().instrument(excluded_urls="health,metrics")
    # Publishing (the bridge, a worker's chains) puts the context in the task headers; the
    # worker's task spans continue it.
    CeleryInstrumentor().instrument()
    if database_engine == "django.db.backends.postgresql":
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

        PsycopgInstrumentor().instrument(skip_dep_check=True)
    elif database_engine == "django.db.backends.sqlite3":
        from opentelemetry.instrumentation.sqlite3 import SQLite3Instrumentor

        SQLite3Instrumentor().instrument()
