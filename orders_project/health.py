"""Liveness, readiness and metrics endpoints."""

from __future__ import annotations

import os
import time
from typing import Callable

from django.conf import settings
from django.db import connection
from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from kombu import Connection
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import AllowAny
from rest_framework.response import Response

from events.metrics import OutboxBacklogCollector
from messaging.kafka import check_broker
from orders.metrics import OrdersByStatusCollector


def check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def check_kafka() -> None:
    check_broker(timeout=settings.KAFKA["health_timeout"])


def check_celery_broker() -> None:
    timeout = settings.CELERY_HEALTH_TIMEOUT
    with Connection(settings.CELERY_BROKER_URL, connect_timeout=timeout) as broker:
        broker.ensure_connection(max_retries=1, timeout=timeout)


READINESS_CHECKS: dict[str, Callable[[], None]] = {
    "database": check_database,
    "kafka": check_kafka,
    "celery_broker": check_celery_broker,
}
# web takes orders as long as the database answers: they wait in the outbox while Kafka or the
# Celery broker is away. Those two are reported ("degraded"), but a probe keeps web in service.
REQUIRED_CHECKS = frozenset({"database"})


def _run_check(check: Callable[[], None]) -> dict:
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:  # a readiness probe reports every failure, whatever its kind
        return {"status": "down", "error": f"{type(exc).__name__}: {exc}"}
    return {"status": "ok", "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


@extend_schema(summary="Liveness: the web process is up", responses={200: dict})
@api_view(["GET"])
@permission_classes([AllowAny])
def liveness(request):
    return Response({"status": "ok", "service": settings.SERVICE_NAME, "environment": settings.ENVIRONMENT})


@extend_schema(
    summary="Readiness: 200 while the database answers (degraded if Kafka or the Celery broker does not)",
    responses={200: dict, 503: dict},
)
@api_view(["GET"])
@permission_classes([AllowAny])
def readiness(request):
    checks = {name: _run_check(check) for name, check in READINESS_CHECKS.items()}
    down = {name for name, result in checks.items() if result["status"] != "ok"}
    if down & REQUIRED_CHECKS:
        return Response({"status": "not_ready", "checks": checks}, status=503)
    return Response({"status": "degraded" if down else "ready", "checks": checks})


def metrics(request):
    """Prometheus scrape endpoint (plain Django view: the text format is not JSON): web's own
    counters, and the state that lives in the database (orders by status, the outbox backlog),
    read now so that it is right whichever process changed it."""
    # prometheus_client's own variable, set by gunicorn.conf.py: the workers' counters are pooled.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        process_registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(process_registry)
    else:
        process_registry = REGISTRY
    database_registry = CollectorRegistry()
    database_registry.register(OrdersByStatusCollector())
    database_registry.register(OutboxBacklogCollector())
    body = generate_latest(process_registry) + generate_latest(database_registry)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
