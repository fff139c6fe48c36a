"""What only development gets, and what production requires before a process starts.

Only ``ENVIRONMENT=development``, exactly, is development: debug pages, a key from the repository,
any Host, an open API and the backends that write emails and SMS to the log. Every other value
(missing, ``prod``, ``staging``, a typo) is production, and a production process refuses to start,
with ImproperlyConfigured naming the variable to set, rather than run with any of those.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured

DEVELOPMENT = "development"

# The key development runs with when DJANGO_SECRET_KEY is unset. It is in the repository, so
# production refuses it (and anything containing "insecure").
DEVELOPMENT_SECRET_KEY = "dev-insecure-secret-key-for-local-development-only"

# Parts of the keys that examples, docs and tutorials carry ("REPLACE-ME-..." in
# deploy/k8s/secret.example.yaml, "change-me", Django's "django-insecure-..."): a key holding one
# was copied, not generated. Six characters or more, so a random key holds one by chance about
# once in a hundred million.
PLACEHOLDER_MARKERS = ("replace", "changeme", "change-me", "change_me", "insecure", "placeholder", "example")
# Django's own deploy check wants 50 characters; a generated key has dozens of different ones.
MIN_SECRET_KEY_LENGTH = 50
MIN_SECRET_KEY_DISTINCT = 10
MIN_INTERNAL_TOKEN_LENGTH = 32
GENERATE_KEY = "python3 -c 'import secrets; print(secrets.token_urlsafe(50))'"

# Email backends that deliver nothing: each writes the message (recipient, body: customer data)
# to the log, the console, files or memory. Development only.
UNDELIVERING_EMAIL_BACKENDS = {
    "notifications.backends.LogEmailBackend": "writes every email to the log",
    "django.core.mail.backends.console.EmailBackend": "writes every email to the console",
    "django.core.mail.backends.filebased.EmailBackend": "writes every email to a file",
    "django.core.mail.backends.locmem.EmailBackend": "keeps every email in memory",
    "django.core.mail.backends.dummy.EmailBackend": "drops every email",
}
LOG_EMAIL_BACKEND = "notifications.backends.LogEmailBackend"
SMTP_EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
LOG_SMS_BACKEND = "notifications.backends.LoggingSmsBackend"
# The payment gateway that moves no money (payments/simulator.py): a shop running it in production
# ships every order as paid and charges nobody.
SIMULATED_GATEWAY = "payments.simulator.SimulatedGateway"

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def is_development(environment: str) -> bool:
    return environment == DEVELOPMENT


def secret_problem(value: str, *, min_length: int = MIN_SECRET_KEY_LENGTH) -> str | None:
    """Why ``value`` cannot serve as production's secret (a signing key, a bearer token), or None
    if it can."""
    if not value:
        return "it is not set"
    if value == DEVELOPMENT_SECRET_KEY or any(marker in value.lower() for marker in PLACEHOLDER_MARKERS):
        return "it is a placeholder from the repository or an example"
    if len(value) < min_length:
        return f"it has {len(value)} characters, fewer than {min_length}"
    trigrams = [value[i : i + 3] for i in range(len(value) - 2)]
    if len(set(value)) < MIN_SECRET_KEY_DISTINCT or len(set(trigrams)) < 0.75 * len(trigrams):
        return "it is not random (too few different characters, or a repeated pattern)"
    return None


def secret_key(configured: str, *, development: bool) -> str:
    if development:
        return configured or DEVELOPMENT_SECRET_KEY
    if problem := secret_problem(configured):
        raise ImproperlyConfigured(
            f"Set DJANGO_SECRET_KEY to a random value of {MIN_SECRET_KEY_LENGTH}+ characters ({GENERATE_KEY}): "
            f"{problem}. Only ENVIRONMENT=development runs without one."
        )
    return configured


def internal_token(configured: str, *, development: bool) -> str:
    """HTTP_INTERNAL_TOKEN, the bearer token of /metrics and /health/ready: empty leaves them open
    in development and unserved in production; a production token must be a random one."""
    if configured and not development and (problem := secret_problem(configured, min_length=MIN_INTERNAL_TOKEN_LENGTH)):
        raise ImproperlyConfigured(
            f"Set HTTP_INTERNAL_TOKEN to a random value of {MIN_INTERNAL_TOKEN_LENGTH}+ characters "
            f"(python3 -c 'import secrets; print(secrets.token_urlsafe(32))'): {problem}."
        )
    return configured


def debug(configured: Any, *, development: bool) -> bool:
    """DJANGO_DEBUG: empty means on in development and off in production, where true is refused."""
    on = development_default(configured, development=development, name="DJANGO_DEBUG")
    if on and not development:
        raise ImproperlyConfigured(
            "DJANGO_DEBUG must be false outside ENVIRONMENT=development (debug pages show settings and data)"
        )
    return on


def development_default(configured: Any, *, development: bool, name: str) -> bool:
    """A true/false setting whose empty value means on in development and off anywhere else."""
    value = str(configured).strip().lower()
    if value and value not in _TRUE | _FALSE:
        raise ImproperlyConfigured(f"{name} must be true, false or empty, not {configured!r}")
    return value in _TRUE if value else development


def allowed_hosts(configured: list[str], *, development: bool) -> list[str]:
    hosts = [host.strip() for host in configured if host.strip()]
    if development:
        return hosts or ["*"]
    if not hosts or "*" in hosts:
        raise ImproperlyConfigured(
            "Set HTTP_ALLOWED_HOSTS to the names clients use for the API, comma-separated "
            "(e.g. orders.example.com,localhost): production answers no other Host, and never '*'"
        )
    return hosts


def email_backend(config: dict, *, development: bool) -> str:
    """NOTIFICATION_EMAIL_BACKEND: empty means the log locally, SMTP in production, where a
    backend that delivers nothing (and logs the customer's email) is refused."""
    backend = config["notification"]["email_backend"]
    if development:
        return backend or LOG_EMAIL_BACKEND
    backend = backend or SMTP_EMAIL_BACKEND
    if backend in UNDELIVERING_EMAIL_BACKENDS:
        raise ImproperlyConfigured(
            f"NOTIFICATION_EMAIL_BACKEND={backend} {UNDELIVERING_EMAIL_BACKENDS[backend]} and sends nothing: "
            f"outside ENVIRONMENT=development leave it empty (SMTP, {SMTP_EMAIL_BACKEND}) or name a delivering one"
        )
    if backend == SMTP_EMAIL_BACKEND and config["notification"]["email_enabled"] and not config["email"]["host"]:
        raise ImproperlyConfigured(
            "Set EMAIL_HOST to the SMTP server (with EMAIL_PORT, EMAIL_USER, EMAIL_PASSWORD, EMAIL_USE_TLS "
            "or EMAIL_USE_SSL), or NOTIFICATION_EMAIL_ENABLED=false"
        )
    return backend


def sms_backend(config: dict, *, development: bool) -> str:
    """NOTIFICATION_SMS_BACKEND: empty means the log locally; production has no default (the
    service ships no SMS provider), so SMS on needs a class of yours, and never the logging one."""
    backend = config["notification"]["sms_backend"]
    if development:
        return backend or LOG_SMS_BACKEND
    if backend == LOG_SMS_BACKEND:
        raise ImproperlyConfigured(
            f"NOTIFICATION_SMS_BACKEND={backend} writes every SMS to the log and sends nothing: outside "
            "ENVIRONMENT=development name an SMS provider's backend, or leave it empty with SMS off"
        )
    if config["notification"]["sms_enabled"] and not backend:
        raise ImproperlyConfigured(
            "Set NOTIFICATION_SMS_BACKEND to your SMS provider's backend class (notifications.backends.SmsBackend), "
            "or NOTIFICATION_SMS_ENABLED=false"
        )
    return backend


def payment_gateway(config: dict, *, development: bool) -> str:
    """PAYMENTS_GATEWAY_CLASS: the simulator by default; outside development only with
    PAYMENTS_ALLOW_SIMULATOR=true (a demo), since it charges nobody."""
    gateway = config["payments"]["gateway_class"].strip()
    if not gateway:
        raise ImproperlyConfigured(
            "Set PAYMENTS_GATEWAY_CLASS to your payment provider's adapter (payments.gateway.PaymentGateway), "
            f"or to {SIMULATED_GATEWAY}"
        )
    if gateway == SIMULATED_GATEWAY and not development and not config["payments"]["allow_simulator"]:
        raise ImproperlyConfigured(
            f"PAYMENTS_GATEWAY_CLASS={gateway} is the simulator, which charges nobody: outside "
            "ENVIRONMENT=development name your payment provider's adapter (payments.gateway.PaymentGateway), "
            "or set PAYMENTS_ALLOW_SIMULATOR=true for a demo"
        )
    return gateway


def email_use_ssl(config: dict) -> bool:
    if config["email"]["use_tls"] and config["email"]["use_ssl"]:
        raise ImproperlyConfigured("Set only one of EMAIL_USE_TLS (STARTTLS, port 587) and EMAIL_USE_SSL (port 465)")
    return config["email"]["use_ssl"]


def proxy_ssl_header(header: str) -> tuple[str, str] | None:
    """``X-Forwarded-Proto`` -> ``("HTTP_X_FORWARDED_PROTO", "https")``; empty: no proxy says it."""
    return (f"HTTP_{header.strip().upper().replace('-', '_')}", "https") if header.strip() else None
