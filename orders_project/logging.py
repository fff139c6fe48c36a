"""structlog JSON logging shared by every process (web, relay, bridge, worker).

Context such as ``correlation_id``, ``order_id`` and ``event_id`` is bound with
``structlog.contextvars`` and merged into every line, including lines emitted through the
standard library by Django, Celery and confluent-kafka callbacks; so are the ``trace_id`` and
``span_id`` of the span in progress when tracing is on.
"""

from __future__ import annotations

import logging

import structlog
from opentelemetry import trace


def add_trace_ids(_logger, _method, event_dict):
    """``trace_id`` and ``span_id`` of the span in progress, as the trace's exporters write them
    (hex); nothing when no span is (tracing off: the API's no-op answers)."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event_dict.setdefault("trace_id", trace.format_trace_id(span_context.trace_id))
        event_dict.setdefault("span_id", trace.format_span_id(span_context.span_id))
    return event_dict


# The "service" of every log line, the namespace of the traces and the domain of the emails' Message-IDs.
SERVICE_NAME = "order-processing-system"

_SHARED_PROCESSORS = [
    structlog.contextvars.merge_contextvars,
    add_trace_ids,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
    structlog.processors.StackInfoRenderer(),
]


def configure_structlog() -> None:
    # The JSON lines never show a record's source line, thread or process, so the standard library
    # need not look them up for every record (the "Optimization" section of the logging HOWTO):
    # finding the caller walks the stack on every call.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Python's warnings (Celery's SecurityWarning, say) become log records, hence JSON lines.
    logging.captureWarnings(True)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED_PROCESSORS,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def logging_config(*, level: str, environment: str) -> dict:
    """A ``LOGGING`` dict that renders every record, structlog's or stdlib's, as one JSON line."""
    service_fields = {"service": SERVICE_NAME, "environment": environment}

    def add_service_fields(_logger, _method, event_dict):
        for key, value in service_fields.items():
            event_dict.setdefault(key, value)
        return event_dict

    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {
                "()": structlog.stdlib.ProcessorFormatter,
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    add_service_fields,
                    structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(),
                ],
                "foreign_pre_chain": _SHARED_PROCESSORS,
            }
        },
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json"}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            # The access log line is ours (see CorrelationIdMiddleware); Django's duplicates it.
            "django.server": {"level": logging.WARNING},
            # Replaced by task_received and task_done, which carry the task's log context.
            "celery.worker.strategy": {"level": logging.WARNING},
            "celery.app.trace": {"level": logging.WARNING},
            "django.db.backends": {"level": logging.INFO},
        },
    }
