"""HTTP edge concerns: correlation ids, access logging and metrics, the request body limit."""

from __future__ import annotations

import re
import time
import uuid

import structlog
from django.conf import settings
from django.http import JsonResponse

from orders_project.metrics import HTTP_DURATION, HTTP_REQUESTS

CORRELATION_HEADER = "X-Correlation-ID"
# Accepted from clients as-is; anything else is replaced, so logs never carry attacker-shaped text.
_VALID_CORRELATION_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

access_log = structlog.get_logger("orders.http")


def incoming_correlation_id(request) -> str:
    candidate = request.headers.get(CORRELATION_HEADER) or request.headers.get("X-Request-ID") or ""
    return candidate if _VALID_CORRELATION_ID.match(candidate) else str(uuid.uuid4())


class CorrelationIdMiddleware:
    """Binds a correlation id to every log line of the request and returns it as a header."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        correlation_id = incoming_correlation_id(request)
        request.correlation_id = correlation_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(correlation_id=correlation_id)
        started = time.perf_counter()
        try:
            response = self.get_response(request)
            response[CORRELATION_HEADER] = correlation_id
            duration = time.perf_counter() - started
            access_log.info(
                "http_request",
                method=request.method,
                path=request.path,
                status=response.status_code,
                duration_ms=round(duration * 1000, 2),
            )
            # Labelled by view name, not path: ids in paths would make a series per order.
            view = request.resolver_match.view_name if request.resolver_match else "unmatched"
            HTTP_REQUESTS.labels(request.method, view, str(response.status_code)).inc()
            HTTP_DURATION.labels(request.method, view).observe(duration)
            return response
        finally:
            structlog.contextvars.clear_contextvars()


class RequestBodyLimitMiddleware:
    """Refuses bodies over ``http.max_body_bytes`` with 413 before anything reads them."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return JsonResponse({"error": "Invalid Content-Length header"}, status=400)
        if length > settings.MAX_REQUEST_BODY_BYTES:
            return JsonResponse(
                {"error": f"Request body too large: {length} bytes, limit {settings.MAX_REQUEST_BODY_BYTES}"},
                status=413,
            )
        return self.get_response(request)
