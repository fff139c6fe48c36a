"""Kafka over TLS and SASL: the security settings reach every client, the pipeline runs over
mutual TLS with SCRAM-SHA-512, and a client the broker refuses stops at start naming the cause.

The bundled broker serves plaintext only, so it sits behind ``devtools.kafka_security``'s
listener: TLS requiring a client certificate from the test's CA, then the SASL exchange.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaException
from structlog.testing import capture_logs

from devtools.broker import EmbeddedKafkaBroker, free_port
from devtools.harness.audit import wait_for_completion
from devtools.harness.process_group import ProcessGroup
from devtools.harness.sample_orders import post_order
from devtools.kafka_security import SecuredListener, make_certificates, server_tls_context
from messaging.kafka import SECURITY_SETTINGS, KafkaAccessError, check_broker, client_config
from orders_project import health
from orders_project.config import BASE_DIR, load_config

USER = "order-service"
# Random, so that finding it anywhere in a log or a response means it leaked.
PASSWORD = f"pw-{secrets.token_hex(12)}"
WRONG_PASSWORD = f"wrong-{secrets.token_hex(12)}"
# Stands for the CA file of a CA the broker's certificate is not from.
UNTRUSTED_CA = "<untrusted CA>"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def untrusted_ca(tmp_path_factory):
    return str(make_certificates(tmp_path_factory.mktemp("untrusted")).ca)


@pytest.fixture(scope="module")
def secured_kafka(certificates, tmp_path_factory):
    """The bundled broker, advertised through a listener requiring mutual TLS then SASL
    (``tls``); a second listener asks for SASL over plaintext (``sasl``)."""
    tls_port = free_port()
    broker = EmbeddedKafkaBroker(advertised_port=tls_port, log_path=tmp_path_factory.mktemp("kafka") / "broker.log").start()
    users = {USER: PASSWORD}
    tls = SecuredListener(port=tls_port, upstream_port=broker.port, tls=server_tls_context(certificates), users=users).start()
    sasl = SecuredListener(port=free_port(), upstream_port=broker.port, users=users).start()
    yield SimpleNamespace(tls=tls, sasl=sasl)
    tls.stop()
    sasl.stop()
    broker.stop()


def security_env(
    listener: SecuredListener, certificates, *, mechanism: str = "SCRAM-SHA-512", untrusted_ca: str = "", **overrides: str
) -> dict[str, str]:
    """The KAFKA_* variables of a client of ``listener``; ``UNTRUSTED_CA`` in ``overrides`` stands
    for ``untrusted_ca``."""
    env = {
        "KAFKA_BROKERS": f"127.0.0.1:{listener.port}",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL" if listener.tls else "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": mechanism,
        "KAFKA_SASL_USERNAME": USER,
        "KAFKA_SASL_PASSWORD": PASSWORD,
    }
    if listener.tls:
        env |= {
            "KAFKA_SSL_CA_LOCATION": str(certificates.ca),
            "KAFKA_SSL_CERTIFICATE_LOCATION": str(certificates.client_certificate),
            "KAFKA_SSL_KEY_LOCATION": str(certificates.client_key),
        }
    return env | {name: untrusted_ca if value == UNTRUSTED_CA else value for name, value in overrides.items()}


def load_kafka_settings(settings, monkeypatch, env: dict[str, str]) -> None:
    """The Kafka settings a process started with ``env`` has."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings.KAFKA = load_config()["kafka"]


def test_security_settings_from_the_environment_reach_client_config(settings, monkeypatch):
    assert not set(client_config()) & {name.replace("_", ".") for name in SECURITY_SETTINGS}

    env = {f"KAFKA_{name.upper()}": f"{name}-value" for name in SECURITY_SETTINGS}
    load_kafka_settings(settings, monkeypatch, env)

    config = client_config()
    assert {name: config[name] for name in config if name.startswith(("security.", "ssl.", "sasl."))} == {
        "security.protocol": "security_protocol-value",
        "ssl.ca.location": "ssl_ca_location-value",
        "ssl.certificate.location": "ssl_certificate_location-value",
        "ssl.key.location": "ssl_key_location-value",
        "sasl.mechanism": "sasl_mechanism-value",
        "sasl.username": "sasl_username-value",
        "sasl.password": "sasl_password-value",
    }


@pytest.mark.parametrize(
    ("listener", "mechanism"),
    [("tls", "SCRAM-SHA-512"), ("tls", "SCRAM-SHA-256"), ("tls", "PLAIN"), ("sasl", "SCRAM-SHA-256"), ("sasl", "PLAIN")],
)
def test_clients_authenticate_with_each_mechanism(listener, mechanism, secured_kafka, certificates, settings, monkeypatch):
    front = getattr(secured_kafka, listener)
    load_kafka_settings(settings, monkeypatch, security_env(front, certificates, mechanism=mechanism))

    assert check_broker(timeout=10) == 1
    assert (mechanism, USER) in front.sessions


@pytest.mark.parametrize(
    ("overrides", "cause", "hint"),
    [
        ({"KAFKA_SASL_PASSWORD": WRONG_PASSWORD}, "Kafka authentication failed: .*SASL authentication error", "KAFKA_SASL_PASSWORD"),
        ({"KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_PASSWORD": WRONG_PASSWORD}, "Kafka authentication failed", "KAFKA_SASL_PASSWORD"),
        ({"KAFKA_SSL_CA_LOCATION": UNTRUSTED_CA}, "Kafka TLS handshake failed: .*certificate verify failed", "KAFKA_SSL_CA_LOCATION"),
        ({"KAFKA_SSL_CA_LOCATION": "/nonexistent/ca.pem"}, "Kafka client settings refused", "ssl.ca.location"),
    ],
    ids=["wrong-scram-password", "wrong-plain-password", "untrusted-broker-certificate", "missing-ca-file"],
)
def test_a_refused_client_gets_the_cause_not_a_transport_failure(
    overrides, cause, hint, secured_kafka, certificates, untrusted_ca, settings, monkeypatch
):
    load_kafka_settings(settings, monkeypatch, security_env(secured_kafka.tls, certificates, untrusted_ca=untrusted_ca, **overrides))

    started = time.monotonic()
    with pytest.raises(KafkaAccessError, match=cause) as refused:
        check_broker(timeout=3)

    assert time.monotonic() - started < 2  # the refusal ends the wait: no full timeout
    assert hint in str(refused.value)
    assert WRONG_PASSWORD not in str(refused.value)


def test_an_unreachable_broker_is_not_taken_for_a_refusal(certificates, settings, monkeypatch):
    # The relay and the bridge keep retrying this one with backoff.
    listener = SimpleNamespace(port=free_port(), tls=True)
    load_kafka_settings(settings, monkeypatch, security_env(listener, certificates))

    with pytest.raises(KafkaException):
        check_broker(timeout=1)


@pytest.mark.django_db
def test_readiness_names_a_refused_login_without_the_password(client, secured_kafka, certificates, settings, monkeypatch):
    load_kafka_settings(settings, monkeypatch, security_env(secured_kafka.tls, certificates))
    assert client.get("/health/ready").json()["checks"]["kafka"] == "ok"

    load_kafka_settings(settings, monkeypatch, security_env(secured_kafka.tls, certificates, KAFKA_SASL_PASSWORD=WRONG_PASSWORD))
    health.READINESS.clear()  # each process checks at most every couple of seconds
    with capture_logs() as logs:
        response = client.get("/health/ready")

    # The answer says only that Kafka is unavailable; the cause is in the log.
    assert response.json()["checks"]["kafka"] == "unavailable"
    (failure,) = [line for line in logs if line["event"] == "readiness_check_failed"]
    assert failure["check"] == "kafka"
    assert failure["error"].startswith("KafkaAccessError: Kafka authentication failed")
    assert WRONG_PASSWORD not in response.content.decode() + str(logs)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("process", "overrides", "cause"),
    [
        ("relay", {"KAFKA_SASL_PASSWORD": WRONG_PASSWORD}, "Kafka authentication failed"),
        ("bridge", {"KAFKA_SSL_CA_LOCATION": UNTRUSTED_CA}, "Kafka TLS handshake failed"),
    ],
)
def test_a_refused_process_exits_at_start_naming_the_cause(
    process, overrides, cause, secured_kafka, certificates, untrusted_ca, tmp_path
):
    env = security_env(secured_kafka.tls, certificates, untrusted_ca=untrusted_ca, **overrides)
    group = ProcessGroup.for_tests(kafka_brokers=env.pop("KAFKA_BROKERS"), work_dir=tmp_path, **env)

    try:
        started = group.start(process)
        returncode = started.wait(timeout=60)
    finally:
        group.stop_all()

    assert returncode == 1
    refusals = [event for event in group.log_events(process) if event["event"] == "kafka_access_refused"]
    assert refusals and cause in refusals[0]["error"]
    assert f"CommandError: {cause}" in group.log(process)
    assert WRONG_PASSWORD not in group.log(process)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_setup_kafka_topics_exits_non_zero_naming_a_refused_login(secured_kafka, certificates, tmp_path):
    env = security_env(secured_kafka.tls, certificates, KAFKA_SASL_PASSWORD=WRONG_PASSWORD)
    result = subprocess.run(
        [sys.executable, "manage.py", "setup_kafka_topics"],
        cwd=BASE_DIR,
        env={**ProcessGroup.for_tests(kafka_brokers=env["KAFKA_BROKERS"], work_dir=tmp_path).env, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1
    assert "CommandError: Kafka authentication failed" in result.stderr
    assert WRONG_PASSWORD not in result.stdout + result.stderr


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_the_pipeline_runs_over_mutual_tls_with_scram(secured_kafka, certificates, tmp_path):
    port = free_port()
    env = security_env(secured_kafka.tls, certificates)
    group = ProcessGroup.for_tests(
        kafka_brokers=env.pop("KAFKA_BROKERS"), work_dir=tmp_path, HTTP_PORT=str(port), HTTP_WORKERS="1", **env
    )
    secured_kafka.tls.sessions.clear()
    try:
        group.start_system(port=port)
        order_ids = [post_order(group.base_url, user_id=f"secured_{index}") for index in range(3)]
        wait_for_completion(order_ids)
        readiness = group.internal_get("/health/ready").decode()
        relay_metrics = str(group.metrics("relay"))
    finally:
        group.stop_all()

    assert json.loads(readiness)["checks"]["kafka"] == "ok"
    assert set(secured_kafka.tls.sessions) == {("SCRAM-SHA-512", USER)}
    for name in ("web", "relay", "bridge", "worker", "reconciler"):
        assert PASSWORD not in group.log(name), name
    assert PASSWORD not in readiness + relay_metrics
