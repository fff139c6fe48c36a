"""HTTP edge concerns: correlation ids, access logging and metrics, the request body limit,
bodies sent without a Content-Length, and JSON errors on the API's paths."""

from __future__ import annotations

import io
import re
import time
import uuid

import structlog
from django.conf import settings
from django.http import JsonResponse
from rest_framework.response import Response

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


class ChunkedRequestBody:
    """WSGI middleware: a body sent with ``Transfer-Encoding: chunked`` (no Content-Length) is read
    here, at most one byte past ``max_bytes``, and handed on with its length, so Django reads it
    like any other and ``RequestBodyLimitMiddleware`` refuses one over the limit.

    Only where the server has already decoded the chunks and ends the stream at the body's end
    (``wsgi.input_terminated``, as gunicorn does); elsewhere the body is left unread, as before.
    """

    def __init__(self, app, *, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def __call__(self, environ, start_response):
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if chunked and not environ.get("CONTENT_LENGTH") and environ.get("wsgi.input_terminated"):
            body = environ["wsgi.input"].read(self.max_bytes + 1)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return self.app(environ, start_response)


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
                {"error": f"Request body too large: the limit is {settings.MAX_REQUEST_BODY_BYTES} bytes"},
                status=413,
            )
        return self.get_response(request)


# Pages for people, which answer errors as pages; every other path is the API's.
HTML_PATHS = ("/admin/", "/api/docs/", "/api-auth/", "/static/")


class JsonErrorMiddleware:
    """Errors on the API's paths are JSON (``{"error": ...}``) in every environment: Django's own
    404, 405 and 500 pages (the debug ones list every URL pattern) are replaced. DRF's answers,
    the browsable API's pages included, are its own already and pass untouched."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (
            response.status_code < 400
            or isinstance(response, (Response, JsonResponse))
            or request.path.startswith(HTML_PATHS)
        ):
            return response
        error = {
            404: f"Not found: {request.path}",
            405: f"Method {request.method} not allowed on {request.path}",
        }.get(response.status_code, response.reason_phrase)
        json_response = JsonResponse({"error": error}, status=response.status_code)
        if response.has_header("Allow"):
            json_response["Allow"] = response["Allow"]
        return json_response
