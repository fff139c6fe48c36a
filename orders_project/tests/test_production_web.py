"""The web process as containers run it, with production settings, behind a proxy that ends TLS
(the Ingress) and says so in X-Forwarded-Proto: tokens required, plain HTTP redirected except for the
probes, HSTS, and the admin's login working over the proxy."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from http.cookies import SimpleCookie

import pytest
import yaml
from django.contrib.auth.models import User
from django.core.management import call_command
from rest_framework.authtoken.models import Token

from devtools.broker import free_port
from devtools.harness.process_group import ProcessGroup
from devtools.harness.waiting import wait_until
from orders.models import Order
from orders_project.config import BASE_DIR

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


# What the Ingress adds to every request it took over HTTPS.
OVER_TLS = {"X-Forwarded-Proto": "https"}


def request(url: str, *, token: str | None = None, body: dict | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **OVER_TLS}
    if token:
        headers["Authorization"] = f"Token {token}"
    data = json.dumps(body).encode() if body else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def send(port: int, method: str, path: str, *, headers: dict, body: str | None = None) -> http.client.HTTPResponse:
    """One request as it reaches the pod, redirects not followed."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def compose_web_readiness_probe() -> list[str]:
    """The command of web's healthcheck in docker-compose.yml (Kubernetes' readiness probe is the same)."""
    compose = yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text(encoding="utf-8"))
    kind, *command = compose["services"]["web"]["healthcheck"]["test"]
    assert kind == "CMD" and command[0] == "python"
    return [sys.executable, *command[1:]]


def production_web(kafka_broker, tmp_path) -> tuple[int, ProcessGroup]:
    """A web process with what production requires (the simulator allowed), on a free port."""
    port = free_port()
    web = ProcessGroup.for_tests(
        kafka_brokers=kafka_broker.bootstrap_servers,
        work_dir=tmp_path,
        ENVIRONMENT="production",
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        HTTP_ALLOWED_HOSTS="127.0.0.1",
        EMAIL_HOST="smtp.example.com",
        PAYMENTS_ALLOW_SIMULATOR="true",
        HTTP_PORT=str(port),
        HTTP_WORKERS="1",
    )
    return port, web


def _up(url: str) -> bool:
    try:
        return request(url)[0] == 200
    except urllib.error.URLError:
        return False


def test_production_web_refuses_unauthenticated_and_foreign_requests(kafka_broker, tmp_path, seed_order):
    port, web = production_web(kafka_broker, tmp_path)
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

        # Over plain HTTP: redirected to https://, except what probes and scrapers call in the cluster.
        plain = send(port, "GET", "/orders", headers={"Authorization": f"Token {alice}"})
        assert (plain.status, plain.getheader("Location")) == (301, f"https://127.0.0.1:{port}/orders")
        for path, status in {"/health": 200, "/health/ready": 401, "/metrics": 401}.items():
            assert send(port, "GET", path, headers={}).status == status, path
        over_tls = send(port, "GET", "/health", headers=OVER_TLS)
        assert over_tls.getheader("Strict-Transport-Security") == "max-age=31536000; includeSubDomains; preload"
        # /metrics and /health/ready: the internal token only; /health is open.
        assert request(f"{base}/metrics", token=alice)[0] == 401
        assert request(f"{base}/health/ready")[0] == 401
        assert b"http_requests_total" in web.internal_get("/metrics")
        assert json.loads(web.internal_get("/health/ready"))["checks"]["database"] == "ok"

        # The readiness probe of compose and Kubernetes, run as the container runs it (on this port).
        probe = [arg.replace("127.0.0.1:8080", f"127.0.0.1:{port}") for arg in compose_web_readiness_probe()]
        assert subprocess.run(probe, env={**os.environ, "HTTP_INTERNAL_TOKEN": web.internal_token}, timeout=30).returncode == 0
        assert subprocess.run(probe, env={**os.environ, "HTTP_INTERNAL_TOKEN": "forged"}, capture_output=True, timeout=30).returncode != 0
    finally:
        web.stop_all()
    assert Order.objects.get().owner.username == "alice"


def test_production_admin_login_works_behind_the_tls_proxy(kafka_broker, tmp_path):
    port, web = production_web(kafka_broker, tmp_path)
    password = secrets.token_urlsafe(16)
    User.objects.create_superuser("operator", "operator@example.com", password)
    web.start("web")
    try:
        wait_until(lambda: _up(f"http://127.0.0.1:{port}/health"), timeout=30, interval=0.3, message="web did not start")
        form = send(port, "GET", "/admin/login/", headers=OVER_TLS)
        cookie = SimpleCookie(form.getheader("Set-Cookie"))
        assert form.status == 200 and cookie["csrftoken"]["secure"]
        token = cookie["csrftoken"].value

        # The browser posts the form to https://127.0.0.1:<port>: its Origin is the https one.
        login = send(
            port,
            "POST",
            "/admin/login/?next=/admin/",
            headers={
                **OVER_TLS,
                "Origin": f"https://127.0.0.1:{port}",
                "Cookie": f"csrftoken={token}",
                "Content-Type": "application/x-www-form-urlencoded",
            },
            body=urllib.parse.urlencode(
                {"csrfmiddlewaretoken": token, "username": "operator", "password": password, "next": "/admin/"}
            ),
        )
        assert (login.status, login.getheader("Location")) == (302, "/admin/")
        cookies = SimpleCookie()
        for header in login.headers.get_all("Set-Cookie"):
            cookies.load(header)
        assert cookies["sessionid"]["secure"] and cookies["sessionid"]["httponly"]
    finally:
        web.stop_all()
