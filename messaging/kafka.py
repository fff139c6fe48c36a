"""Kafka client configuration shared by the relay, the bridge and the health checks."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata
from django.conf import settings

from common.errors import describe

# librdkafka's own log lines go through the standard library, so they come out as JSON too.
client_logger = logging.getLogger("kafka.client")
error_logger = structlog.get_logger("kafka.client")

# How every client of the service names itself to the brokers (their logs, quotas, ACL audit).
CLIENT_ID = "order-service"

# The settings named after librdkafka's properties (kafka.ssl_ca_location -> ssl.ca.location),
# passed to every client when set.
SECURITY_SETTINGS = (
    "security_protocol",
    "ssl_ca_location",
    "ssl_certificate_location",
    "ssl_key_location",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
)

# librdkafka's codes for a broker that refused this client: the cause, and what to check.
ACCESS_ERRORS = {
    KafkaError._AUTHENTICATION: (
        "Kafka authentication failed",
        "check KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD",
    ),
    KafkaError._SSL: (
        "Kafka TLS handshake failed",
        "check KAFKA_SSL_CA_LOCATION, KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION",
    ),
}


# Longest wait for metadata before the error callbacks are looked at.
METADATA_ATTEMPT_SECONDS = 0.5


class KafkaAccessError(Exception):
    """The broker refused this client (SASL or TLS), or its security settings are unusable: a
    configuration to fix, which retrying cannot cure."""


def redact(text: str) -> str:
    """``text`` without the SASL password, whatever reported it."""
    password = settings.KAFKA.get("sasl_password")
    return text.replace(password, "***") if password else text


class ClientErrors:
    """A client's ``error_cb``: logs librdkafka's errors and keeps the first refusal of access.

    librdkafka names the cause (a failed SASL exchange, an unverified certificate) only here and
    in its log; the exception of the call that failed says "Broker transport failure".
    """

    def __init__(self) -> None:
        self.refusal: KafkaAccessError | None = None

    def __call__(self, error: KafkaError) -> None:
        reason = redact(error.str())
        error_logger.warning("kafka_client_error", code=error.name(), reason=reason)
        if error.code() in ACCESS_ERRORS and self.refusal is None:
            cause, hint = ACCESS_ERRORS[error.code()]
            self.refusal = KafkaAccessError(f"{cause}: {reason} ({hint})")

    def raise_refusal(self) -> None:
        if self.refusal is not None:
            raise self.refusal


def security_config() -> dict[str, str]:
    return {name.replace("_", "."): settings.KAFKA[name] for name in SECURITY_SETTINGS if settings.KAFKA.get(name)}


def client_config(**overrides: Any) -> dict[str, Any]:
    return {
        "bootstrap.servers": ",".join(settings.KAFKA["brokers"]),
        "client.id": CLIENT_ID,
        "logger": client_logger,
        "error_cb": ClientErrors(),
        **security_config(),
        **overrides,
    }


def cluster_metadata(*, timeout: float) -> tuple[AdminClient, ClusterMetadata]:
    """An admin client and the cluster's metadata through it. Raises ``KafkaAccessError`` when
    the broker refused the client or the security settings are unusable, ``KafkaException``
    when the broker did not answer in time."""
    errors = ClientErrors()
    try:
        admin = AdminClient(client_config(error_cb=errors))
    except KafkaException as exc:  # librdkafka checks the settings (files, mechanism) here
        raise KafkaAccessError(f"Kafka client settings refused: {redact(exc.args[0].str())}") from None
    deadline = time.monotonic() + timeout
    # Short attempts, serving the error callbacks in between: a refusal ends the wait at once.
    while True:
        try:
            return admin, admin.list_topics(timeout=min(METADATA_ATTEMPT_SECONDS, max(deadline - time.monotonic(), 0.01)))
        except KafkaException:
            admin.poll(0)
            errors.raise_refusal()
            if time.monotonic() >= deadline:
                raise


def check_broker(*, timeout: float) -> int:
    """Fetch cluster metadata; returns the number of brokers or raises ``KafkaAccessError`` or
    ``KafkaException``."""
    _admin, metadata = cluster_metadata(timeout=timeout)
    return len(metadata.brokers)


@dataclass(frozen=True)
class Received:
    """A consumed message with its headers, read once: None and why when the client cannot
    decode them. confluent-kafka raises SystemError for a header name that is not UTF-8, and a
    second read returns tuples holding NULL that crash the interpreter when touched, so nothing
    reads a consumed message's headers but ``Received.of``."""

    message: Message
    headers: list[tuple[str, bytes | None]] | None
    unreadable: str = ""

    @classmethod
    def of(cls, message: Message) -> Received:
        try:
            return cls(message, list(message.headers() or []))
        except Exception as exc:  # noqa: BLE001 - whatever the client raises, the headers are unreadable
            return cls(message, None, describe(exc))
