"""Liveness, readiness and metrics endpoints.

``/health`` is open to anyone and constant. ``/metrics`` and ``/health/ready`` are for Prometheus
and the probes: with ``http.internal_token`` set they answer only that bearer token; without one
they are open in development and not served in production. However often they are asked, each
process checks its dependencies (or counts orders) at most once per ``CACHE_SECONDS``.
"""

from __future__ import annotations

import functools
import hmac
import os
import threading
import time
from typing import Callable, Generic, TypeVar

import structlog
from django.conf import settings
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_safe
from drf_spectacular.utils import extend_schema
from kombu import Connection
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from rest_framework.decorators import api_view, authentication_classes, permission_classes, throttle_classes
from rest_framework.permissions import AllowAny
from rest_framework.response import Response

from common.errors import describe
from events.metrics import OutboxBacklogCollector
from messaging.kafka import check_broker
from orders.metrics import OrdersByStatusCollector

logger = structlog.get_logger(__name__)

# A flood of probes or scrapes costs one round of checks, or of counting queries, per this many
# seconds per process; Prometheus (15 s) and the probes (10 s) ask less often than that.
CACHE_SECONDS = 2.0
T = TypeVar("T")


class Cached(Generic[T]):
    """``compute()``'s value, computed again once it is ``seconds`` old, by one thread while the
    others asking meanwhile wait for it (they would only repeat the same work)."""

    def __init__(self, compute: Callable[[], T], *, seconds: float):
        self._compute = compute
        self._seconds = seconds
        self._lock = threading.Lock()
        self._value: T | None = None
        self._computed_at: float | None = None

    def get(self) -> T:
        with self._lock:
            if self._computed_at is None or time.monotonic() - self._computed_at >= self._seconds:
                self._value = self._compute()
                self._computed_at = time.monotonic()
            return self._value

    def clear(self) -> None:
        with self._lock:
            self._computed_at = None


def internal_endpoint(view):
    """Only Prometheus and the probes: the bearer token ``http.internal_token`` when it is set
    (compared in constant time); without one, served in development and not at all in production."""

    @functools.wraps(view)
    def guarded(request, *args, **kwargs):
        token = settings.INTERNAL_TOKEN
        if not token:
            if settings.PRODUCTION:
                return JsonResponse({"error": f"Not found: {request.path}"}, status=404)
            return view(request, *args, **kwargs)
        scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(offered.strip().encode(), token.encode()):
            return view(request, *args, **kwargs)
        refusal = JsonResponse({"error": "Authentication required: send 'Authorization: Bearer <internal token>'."}, status=401)
        refusal["WWW-Authenticate"] = 'Bearer realm="internal"'
        return refusal

    return guarded


def check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


# Seconds a readiness check waits for Kafka's metadata or the Celery broker: a probe answers within its own.
BROKER_CHECK_TIMEOUT = 2.0


def check_kafka() -> None:
    check_broker(timeout=BROKER_CHECK_TIMEOUT)


def check_celery_broker() -> None:
    with Connection(settings.CELERY_BROKER_URL, connect_timeout=BROKER_CHECK_TIMEOUT) as broker:
        broker.ensure_connection(max_retries=1, timeout=BROKER_CHECK_TIMEOUT)


READINESS_CHECKS: dict[str, Callable[[], None]] = {
    "database": check_database,
    "kafka": check_kafka,
    "celery_broker": check_celery_broker,
}
# web takes orders as long as the database answers: they wait in the outbox while Kafka or the
# Celery broker is away. Those two are reported ("degraded"), but a probe keeps web in service.
REQUIRED_CHECKS = frozenset({"database"})


def _check(name: str, check: Callable[[], None]) -> str:
    try:
        check()
    except Exception as exc:  # a readiness probe reports every failure, whatever its kind
        # The cause (host names, users, the broker's words) goes to the log only.
        logger.warning("readiness_check_failed", check=name, error=describe(exc))
        return "unavailable"
    return "ok"


def readiness_report() -> tuple[int, dict]:
    """(HTTP status, body) of the readiness view: statuses only."""
    checks = {name: _check(name, check) for name, check in READINESS_CHECKS.items()}
    down = {name for name, status in checks.items() if status != "ok"}
    if down & REQUIRED_CHECKS:
        return 503, {"status": "not_ready", "checks": checks}
    return 200, {"status": "degraded" if down else "ready", "checks": checks}


READINESS = Cached(readiness_report, seconds=CACHE_SECONDS)


@extend_schema(summary="Liveness: the web process is up", responses={200: dict})
@api_view(["GET"])
@authentication_classes([])
@permission_classes([AllowAny])
@throttle_classes([])  # as cheap as a throttle's own check; a probe answered 429 would restart the pod
def liveness(request):
    return Response({"status": "ok", "service": settings.SERVICE_NAME, "environment": settings.ENVIRONMENT})


@require_safe
@internal_endpoint
def readiness(request):
    """200 while the database answers ("degraded" if Kafka or the Celery broker does not), 503 otherwise."""
    status, body = READINESS.get()
    response = JsonResponse(body, status=status)
    response["Cache-Control"] = "no-store"
    return response


class CachedCollector:
    """A collector whose metric families are read at most once per ``seconds``."""

    def __init__(self, collector, *, seconds: float):
        self.families = Cached(lambda: list(collector.collect()), seconds=seconds)

    def collect(self):
        return iter(self.families.get())


# The state that lives in the database (orders by status, the outbox backlog), whichever
# process changed it: a GROUP BY over every order, so not on every request.
DATABASE_COLLECTORS = (
    CachedCollector(OrdersByStatusCollector(), seconds=CACHE_SECONDS),
    CachedCollector(OutboxBacklogCollector(), seconds=CACHE_SECONDS),
)
DATABASE_REGISTRY = CollectorRegistry()
for _collector in DATABASE_COLLECTORS:
    DATABASE_REGISTRY.register(_collector)


@require_safe
@internal_endpoint
def metrics(request):
    """Prometheus scrape endpoint (plain Django view: the text format is not JSON): web's own
    counters, and the database's state as read at most ``CACHE_SECONDS`` ago."""
    # prometheus_client's own variable, set by gunicorn.conf.py: the workers' counters are pooled.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        process_registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(process_registry)
    else:
        process_registry = REGISTRY
    body = generate_latest(process_registry) + generate_latest(DATABASE_REGISTRY)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
