"""Fuzz the HTTP API from its own OpenAPI schema: no 500s, and every response as documented.

Every operation, with its query parameters and headers, valid (positive) and invalid (negative)
as the schema says: so the schema states every bound (page, page_size, Idempotency-Key, the
filters), and the test is as good as those are."""

from __future__ import annotations

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance
from django.core.cache import cache
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings

from orders.services import IDEMPOTENCY_KEY_MAX_LENGTH
from orders_project.pagination import StandardPagination
from orders_project.wsgi import application
from webhooks.services import WEBHOOK_TYPES

schema = schemathesis.openapi.from_wsgi("/api/schema/", application)


@pytest.fixture(autouse=True)
def api_under_fuzz(db, settings, kafka_settings):
    # Thousands of requests from one address: throttling would answer most of them with 429.
    settings.API = {**settings.API, "throttle_anon": "", "throttle_user": ""}
    cache.clear()
    # The app is called as a WSGI server would; like Django's test client, keep the test's
    # database connection (and its transaction) open across requests.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@schema.parametrize()
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_follows_its_schema(case):
    # Every check but "positive data acceptance": a price is a JSON number or a string with at
    # most two decimals, which JSON Schema cannot say of numbers exactly, so some schema-valid
    # prices (0.015) are rightly refused.
    case.call_and_validate(additional_checks=[not_a_server_error], excluded_checks=[positive_data_acceptance])


def _operations() -> dict[str, dict]:
    raw = schema.raw_schema
    return {f"{method.upper()} {path}": operation for path, item in raw["paths"].items() for method, operation in item.items()}


def test_the_fuzzed_schema_has_every_operation_and_its_bounds():
    operations = _operations()
    assert set(operations) == {
        "GET /health/",
        "GET /orders/",
        "POST /orders/",
        "GET /orders/{id}/",
        "GET /orders/{id}/status/",
        "GET /orders/{id}/events/",
        "POST /orders/{id}/cancel/",
        "GET /orders/{id}/refunds/",
        "POST /orders/{id}/refunds/",
        "GET /webhook-endpoints/",
        "POST /webhook-endpoints/",
        "GET /webhook-endpoints/{id}/",
        "PATCH /webhook-endpoints/{id}/",
        "DELETE /webhook-endpoints/{id}/",
        "POST /webhook-endpoints/{id}/rotate-secret/",
        "GET /webhook-endpoints/{id}/deliveries/",
        "POST /webhook-deliveries/{id}/redeliver/",
    }
    parameters = {parameter["name"]: parameter["schema"] for parameter in operations["GET /orders/"]["parameters"]}
    assert (parameters["page"]["minimum"], parameters["page"]["maximum"]) == (1, StandardPagination.max_page)
    assert (parameters["page_size"]["minimum"], parameters["page_size"]["maximum"]) == (1, 100)
    assert (parameters["user_id"]["minLength"], parameters["user_id"]["maxLength"]) == (1, 64)
    assert parameters["status"]["enum"]
    (key,) = [p["schema"] for p in operations["POST /orders/"]["parameters"] if p["name"] == "Idempotency-Key"]
    assert (key["minLength"], key["maxLength"]) == (1, IDEMPOTENCY_KEY_MAX_LENGTH)
    deliveries = {parameter["name"]: parameter["schema"] for parameter in operations["GET /webhook-endpoints/{id}/deliveries/"]["parameters"]}
    assert deliveries["status"]["enum"] and deliveries["page_size"]["maximum"] == 100
    endpoint = schema.raw_schema["components"]["schemas"]["EndpointCreate"]["properties"]
    assert (endpoint["url"]["maxLength"], endpoint["event_types"]["maxItems"]) == (2000, len(WEBHOOK_TYPES))
