"""Secure unless told otherwise: only ENVIRONMENT=development, exactly, runs without production's
requirements; every other value (unset, "prod", "staging", a typo) is production. The settings are
loaded in processes of their own, as a container loads them, from a clean environment."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys

import pytest
import yaml

from orders_project import security
from orders_project.config import BASE_DIR

# Variables of the caller's environment that choose what the settings do (the suite itself runs
# with ENVIRONMENT=development, see devtools/pytest_development.py).
_CHOOSERS = (
    "ENVIRONMENT", "DJANGO_", "HTTP_ALLOWED_HOSTS", "EMAIL_", "NOTIFICATION_", "SECURITY_", "API_REQUIRE_AUTH", "PAYMENTS_",
)
NOT_DEVELOPMENT = [None, "production", "prod", "staging", "develop", "Development", "development "]

# What settings print: the ones production changes.
_PRINT = """
import django, json
django.setup()
from django.conf import settings as s
print(json.dumps({
    "DEBUG": s.DEBUG, "ALLOWED_HOSTS": s.ALLOWED_HOSTS, "API_REQUIRE_AUTH": s.API_REQUIRE_AUTH,
    "SECRET_KEY": s.SECRET_KEY, "SESSION_COOKIE_SECURE": s.SESSION_COOKIE_SECURE,
    "CSRF_COOKIE_SECURE": s.CSRF_COOKIE_SECURE, "SECURE_SSL_REDIRECT": s.SECURE_SSL_REDIRECT,
    "SECURE_REDIRECT_EXEMPT": s.SECURE_REDIRECT_EXEMPT, "SECURE_HSTS_SECONDS": s.SECURE_HSTS_SECONDS,
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": s.SECURE_HSTS_INCLUDE_SUBDOMAINS,
    "SECURE_PROXY_SSL_HEADER": s.SECURE_PROXY_SSL_HEADER, "CSRF_TRUSTED_ORIGINS": s.CSRF_TRUSTED_ORIGINS,
    "EMAIL_BACKEND": s.EMAIL_BACKEND, "SMS_BACKEND": s.NOTIFICATION["sms_backend"],
    "EMAIL": [s.EMAIL_HOST, s.EMAIL_PORT, s.EMAIL_HOST_USER, s.EMAIL_HOST_PASSWORD, s.EMAIL_USE_TLS, s.EMAIL_USE_SSL],
    "PAYMENTS_GATEWAY": s.PAYMENTS["gateway_class"],
}))
"""


def random_key() -> str:
    return secrets.token_urlsafe(50)


# A class of the tests that implements the gateway interface: a provider's adapter, as far as the
# settings can tell.
PROVIDER_ADAPTER = "payments.tests.test_gateway.AlwaysTimesOut"


def production_env(**overrides: str | None) -> dict[str, str | None]:
    """What production needs, as an operator provides it."""
    return {
        "DJANGO_SECRET_KEY": random_key(),
        "HTTP_ALLOWED_HOSTS": "orders.example.com,localhost",
        "EMAIL_HOST": "smtp.example.com",
        "PAYMENTS_GATEWAY_CLASS": PROVIDER_ADAPTER,
        **overrides,
    }


def run(args: list[str], **env: str | None) -> subprocess.CompletedProcess:
    """``python <args>`` in the project with a clean environment plus ``env`` (None: unset)."""
    base = {name: value for name, value in os.environ.items() if not name.startswith(_CHOOSERS)}
    chosen = {name: value for name, value in env.items() if value is not None}
    return subprocess.run(
        [sys.executable, *args],
        cwd=BASE_DIR,
        env={**base, "DJANGO_SETTINGS_MODULE": "orders_project.settings", "DATABASE_URL": "sqlite:///:memory:", **chosen},
        capture_output=True,
        text=True,
        timeout=120,
    )


def loaded_settings(**env: str | None) -> dict:
    result = run(["-c", _PRINT], **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def refusal(**env: str | None) -> str:
    """The ImproperlyConfigured message the settings stop with."""
    result = run(["-c", "import django; django.setup()"], **env)
    assert result.returncode != 0, "the settings loaded"
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("django.core.exceptions.ImproperlyConfigured")]
    return line


def test_check_deploy_is_clean_under_production_settings():
    result = run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], ENVIRONMENT="production", **production_env())

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout
    assert "WARNING" not in result.stdout + result.stderr


@pytest.mark.parametrize("environment", NOT_DEVELOPMENT)
def test_anything_but_development_refuses_to_start_without_a_key(environment):
    assert "Set DJANGO_SECRET_KEY" in refusal(ENVIRONMENT=environment)


@pytest.mark.parametrize("environment", NOT_DEVELOPMENT)
def test_anything_but_development_runs_with_production_settings(environment):
    env = production_env(ENVIRONMENT=environment, SECURITY_CSRF_TRUSTED_ORIGINS="https://orders.example.com")

    loaded = loaded_settings(**env)

    assert loaded["DEBUG"] is False
    assert loaded["SECRET_KEY"] == env["DJANGO_SECRET_KEY"]
    assert loaded["ALLOWED_HOSTS"] == ["orders.example.com", "localhost"]
    assert loaded["API_REQUIRE_AUTH"] is True
    assert loaded["SESSION_COOKIE_SECURE"] is loaded["CSRF_COOKIE_SECURE"] is loaded["SECURE_SSL_REDIRECT"] is True
    assert loaded["SECURE_HSTS_SECONDS"] >= 31536000 and loaded["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
    assert loaded["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert loaded["CSRF_TRUSTED_ORIGINS"] == ["https://orders.example.com"]
    # Probes and scrapers call over plain HTTP inside the cluster (Django matches the path without
    # its leading slash); nothing else is exempt.
    exempt = [path for path in ("health", "health/", "health/ready", "metrics", "orders", "admin/login/", "api/docs/")
              if any(re.search(pattern, path) for pattern in loaded["SECURE_REDIRECT_EXEMPT"])]
    assert exempt == ["health", "health/", "health/ready", "metrics"]
    assert loaded["EMAIL_BACKEND"] == "django.core.mail.backends.smtp.EmailBackend"
    assert loaded["SMS_BACKEND"] == ""
    assert loaded["PAYMENTS_GATEWAY"] == PROVIDER_ADAPTER


def test_only_development_exactly_gets_debug_the_dev_key_open_hosts_an_open_api_and_the_log_backends():
    loaded = loaded_settings(ENVIRONMENT="development")

    assert loaded["DEBUG"] is True
    assert loaded["SECRET_KEY"] == security.DEVELOPMENT_SECRET_KEY
    assert loaded["ALLOWED_HOSTS"] == ["*"]
    assert loaded["API_REQUIRE_AUTH"] is False
    assert loaded["SESSION_COOKIE_SECURE"] is loaded["SECURE_SSL_REDIRECT"] is False
    assert loaded["SECURE_HSTS_SECONDS"] == 0
    assert loaded["EMAIL_BACKEND"] == "notifications.backends.LogEmailBackend"
    assert loaded["SMS_BACKEND"] == "notifications.backends.LoggingSmsBackend"
    assert loaded["PAYMENTS_GATEWAY"] == security.SIMULATED_GATEWAY


def test_production_sends_email_over_smtp_with_the_configured_server():
    loaded = loaded_settings(
        **production_env(
            EMAIL_HOST="smtp.example.com", EMAIL_PORT="465", EMAIL_USER="orders", EMAIL_PASSWORD="mail-password",
            EMAIL_USE_TLS="false", EMAIL_USE_SSL="true",
        )
    )

    assert loaded["EMAIL_BACKEND"] == "django.core.mail.backends.smtp.EmailBackend"
    assert loaded["EMAIL"] == ["smtp.example.com", 465, "orders", "mail-password", False, True]


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"NOTIFICATION_EMAIL_BACKEND": "notifications.backends.LogEmailBackend"}, "NOTIFICATION_EMAIL_BACKEND"),
        ({"NOTIFICATION_EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend"}, "NOTIFICATION_EMAIL_BACKEND"),
        ({"NOTIFICATION_SMS_BACKEND": "notifications.backends.LoggingSmsBackend"}, "NOTIFICATION_SMS_BACKEND"),
        ({"NOTIFICATION_SMS_ENABLED": "true"}, "Set NOTIFICATION_SMS_BACKEND"),
        ({"EMAIL_HOST": None}, "Set EMAIL_HOST"),
        ({"EMAIL_USE_TLS": "true", "EMAIL_USE_SSL": "true"}, "EMAIL_USE_SSL"),
        ({"HTTP_ALLOWED_HOSTS": None}, "Set HTTP_ALLOWED_HOSTS"),
        ({"HTTP_ALLOWED_HOSTS": "orders.example.com,*"}, "Set HTTP_ALLOWED_HOSTS"),
        ({"DJANGO_DEBUG": "true"}, "DJANGO_DEBUG must be false"),
        ({"PAYMENTS_GATEWAY_CLASS": None}, "PAYMENTS_ALLOW_SIMULATOR=true"),
        ({"PAYMENTS_GATEWAY_CLASS": security.SIMULATED_GATEWAY}, "PAYMENTS_ALLOW_SIMULATOR=true"),
        ({"PAYMENTS_GATEWAY_CLASS": ""}, "Set PAYMENTS_GATEWAY_CLASS"),
        ({"PAYMENTS_GATEWAY_CLASS": "payments.nowhere.Gateway"}, "PAYMENTS_GATEWAY_CLASS='payments.nowhere.Gateway' cannot be imported"),
    ],
    ids=[
        "log-email", "console-email", "log-sms", "sms-without-provider", "no-smtp-host", "tls-and-ssl", "no-hosts", "any-host",
        "debug", "default-simulator", "simulator", "no-gateway", "gateway-not-found",
    ],
)
def test_production_refuses_to_start_and_names_the_variable(env, variable):
    """Customer data stays out of the logs: no backend that writes messages there, or drops them."""
    assert variable in refusal(**production_env(**env))


def test_production_runs_the_simulator_only_when_told_to():
    """A demo (compose's stack) may charge nobody, knowingly."""
    loaded = loaded_settings(**production_env(PAYMENTS_GATEWAY_CLASS=None, PAYMENTS_ALLOW_SIMULATOR="true"))

    assert loaded["PAYMENTS_GATEWAY"] == security.SIMULATED_GATEWAY


def test_the_simulator_production_refuses_is_the_one_in_the_code():
    from payments.simulator import SimulatedGateway

    assert security.SIMULATED_GATEWAY == f"{SimulatedGateway.__module__}.{SimulatedGateway.__qualname__}"


def test_production_may_turn_email_off_instead_of_naming_a_server():
    loaded = loaded_settings(**production_env(EMAIL_HOST=None, NOTIFICATION_EMAIL_ENABLED="false"))

    assert loaded["EMAIL_BACKEND"] == "django.core.mail.backends.smtp.EmailBackend"


def _example_secret_key() -> str:
    secret = yaml.safe_load((BASE_DIR / "deploy" / "k8s" / "secret.example.yaml").read_text(encoding="utf-8"))
    return secret["stringData"]["DJANGO_SECRET_KEY"]


@pytest.mark.parametrize(
    "token, reason", [("short", "fewer than 32"), ("REPLACE-ME-with-a-long-random-string-too", "placeholder")]
)
def test_production_refuses_an_internal_token_that_is_short_or_a_placeholder(token, reason):
    line = refusal(ENVIRONMENT="production", **production_env(HTTP_INTERNAL_TOKEN=token))
    assert "HTTP_INTERNAL_TOKEN" in line and reason in line


def test_the_settings_refuse_the_key_of_the_example_secret():
    assert "placeholder" in refusal(**production_env(DJANGO_SECRET_KEY=_example_secret_key()))


@pytest.mark.parametrize(
    "key, reason",
    [
        (security.DEVELOPMENT_SECRET_KEY, "placeholder"),
        ("dev-insecure-secret-key-change-me", "placeholder"),
        ("django-insecure-" + secrets.token_urlsafe(50), "placeholder"),
        ("change-me-" + secrets.token_urlsafe(50), "placeholder"),
        ("CHANGEME" + secrets.token_urlsafe(50), "placeholder"),
        ("replace_me_" + secrets.token_urlsafe(50), "placeholder"),
        ("your-secret-key-example-" + secrets.token_urlsafe(40), "placeholder"),
        ("", "not set"),
        (secrets.token_urlsafe(30), "fewer than 50"),
        ("s" * 64, "not random"),
        ("e2e-" + "s" * 60, "not random"),
        ("0123456789" * 6, "not random"),
        ("correct-horse-battery-staple-" * 3, "not random"),
    ],
)
def test_placeholder_short_and_low_variety_keys_are_refused(key, reason):
    assert reason in security.secret_problem(key)


def test_the_example_secret_carries_a_placeholder_key():
    assert "placeholder" in security.secret_problem(_example_secret_key())


@pytest.mark.parametrize("key", [secrets.token_urlsafe(50) for _ in range(20)] + [secrets.token_hex(32) for _ in range(20)])
def test_generated_keys_are_accepted(key):
    assert security.secret_problem(key) is None


@pytest.mark.parametrize(
    "configured, development, on",
    [("", True, True), ("", False, False), ("false", True, False), ("true", True, True), ("0", False, False), (True, True, True)],
)
def test_debug_is_on_only_in_development_unless_turned_off(configured, development, on):
    assert security.debug(configured, development=development) is on
