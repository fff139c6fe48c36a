"""The web process as containers run it, with production settings: tokens required."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import pytest
from django.core.management import call_command
from rest_framework.authtoken.models import Token

from devtools.broker import free_port
from devtools.harness import ProcessGroup, wait_until
from orders.models import Order

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


def request(url: str, *, token: str | None = None, body: dict | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Token {token}"
    data = json.dumps(body).encode() if body else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def _up(url: str) -> bool:
    try:
        return request(url)[0] == 200
    except urllib.error.URLError:
        return False


def test_production_web_refuses_unauthenticated_and_foreign_requests(kafka_broker, tmp_path, seed_order):
    port = free_port()
    web = ProcessGroup.for_tests(
        kafka_brokers=kafka_broker.bootstrap_servers,
        work_dir=tmp_path,
        ENVIRONMENT="production",
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY="e2e-" + "s" * 60,
        HTTP_PORT=str(port),
        HTTP_WORKERS="1",
    )
    for name in ("alice", "bob"):
        call_command("create_api_token", name, stdout=open(os.devnull, "w"))
    alice, bob = (Token.objects.get(user__username=name).key for name in ("alice", "bob"))
    base = f"http://127.0.0.1:{port}"
    web.start("web")
    try:
        wait_until(lambda: _up(f"{base}/health"), timeout=30, interval=0.3, message="web did not start")

        status, body = request(f"{base}/orders", body=seed_order)
        assert (status, body["error"]) == (401, "Authentication credentials were not provided.")
        assert request(f"{base}/orders", token="forged", body=seed_order)[0] == 401

        status, created = request(f"{base}/orders", token=alice, body=seed_order)
        assert status == 201
        assert request(f"{base}/orders/{created['order_id']}", token=alice)[0] == 200
        assert request(f"{base}/orders/{created['order_id']}", token=bob)[0] == 404
        assert request(f"{base}/orders", token=bob)[1]["results"] == []

        # /metrics and /health/ready: the internal token only; /health is open.
        assert request(f"{base}/metrics", token=alice)[0] == 401
        assert request(f"{base}/health/ready")[0] == 401
        assert b"http_requests_total" in web.internal_get("/metrics")
        assert json.loads(web.internal_get("/health/ready"))["checks"]["database"] == "ok"
    finally:
        web.stop_all()
    assert Order.objects.get().owner.username == "alice"
