"""Fuzz the HTTP API from its own OpenAPI schema: no 500s, and every response as documented."""

from __future__ import annotations

import pytest
import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance
from django.core.cache import cache
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings

from orders_project.wsgi import application

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
    case.call_and_validate(excluded_checks=[positive_data_acceptance])
