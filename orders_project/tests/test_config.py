"""config.yaml with environment overrides."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from orders_project import config


@pytest.fixture
def environment(monkeypatch):
    monkeypatch.setattr(config.env, "ENVIRON", {})
    return config.env.ENVIRON


def test_yaml_defaults_are_the_seeds(environment):
    loaded = config.load_config()

    assert loaded["kafka"]["brokers"] == ["localhost:9092"]
    assert loaded["kafka"]["group_id"] == "order-service-group"
    assert loaded["kafka"]["topics"] == ["orders", "payments", "notifications"]
    assert loaded["kafka"]["client_id"] == "order-service"
    assert loaded["http"]["port"] == "8080"
    assert {key: loaded["notification"][key] for key in ("email_enabled", "sms_enabled", "email_from")} == {
        "email_enabled": True,
        "sms_enabled": False,
        "email_from": "noreply@ordersystem.com",
    }
    assert loaded["payments"]["success_rate"] == 0.85
    assert loaded["service_name"] == "order-processing-system"
    # Unset means production: only ENVIRONMENT=development, exactly, is development.
    assert loaded["environment"] == "production"
    assert loaded["database"]["url"].startswith("sqlite:")


def test_seed_variables_override(environment):
    environment.update({"HTTP_PORT": "8081", "KAFKA_BROKERS_0": "kafka:9092", "ENVIRONMENT": "production"})

    loaded = config.load_config()

    assert loaded["http"]["port"] == "8081"
    assert loaded["kafka"]["brokers"] == ["kafka:9092"]
    assert loaded["environment"] == "production"


def test_indexed_and_comma_separated_lists(environment):
    environment.update({"KAFKA_BROKERS_0": "a:9092", "KAFKA_BROKERS_1": "b:9092"})
    assert config.load_config()["kafka"]["brokers"] == ["a:9092", "b:9092"]

    environment.update({"KAFKA_BROKERS": "c:9092,d:9092"})
    assert config.load_config()["kafka"]["brokers"] == ["c:9092", "d:9092"]


def test_values_are_cast_to_the_yaml_type(environment):
    environment.update(
        {
            "NOTIFICATION_SMS_ENABLED": "true",
            "ORDERS_MAX_ITEMS": "5",
            "KAFKA_HEALTH_TIMEOUT": "0.5",
            "DATABASE_URL": "postgres://u@db:5432/orders",
            "CELERY_BROKER_URL": "redis://redis:6379/0",
        }
    )

    loaded = config.load_config()

    assert loaded["notification"]["sms_enabled"] is True
    assert loaded["orders"]["max_items"] == 5
    assert loaded["kafka"]["health_timeout"] == 0.5
    assert loaded["database"]["url"] == "postgres://u@db:5432/orders"
    assert loaded["celery"]["broker_url"] == "redis://redis:6379/0"


def test_bad_value_is_an_error(environment):
    environment.update({"ORDERS_MAX_ITEMS": "many"})

    with pytest.raises(ValueError):
        config.load_config()


def test_config_file_can_be_replaced(environment, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("service_name: other\nhttp:\n  port: '9000'\n")
    environment.update({"CONFIG_FILE": str(other), "HTTP_PORT": "9001"})

    assert config.load_config() == {"service_name": "other", "http": {"port": "9001"}}


@pytest.mark.parametrize(
    ("overrides", "host"),
    [({}, "127.0.0.1"), ({"HTTP_HOST": "0.0.0.0"}, "0.0.0.0"), ({"HTTP_HOST": "0.0.0.0", "METRICS_HOST": "127.0.0.1"}, "127.0.0.1")],
)
def test_metrics_endpoints_bind_the_web_interface_unless_told_otherwise(overrides, host):
    env = {name: value for name, value in os.environ.items() if not name.startswith(("HTTP_", "METRICS_"))}
    printed = subprocess.run(
        [sys.executable, "-c", "from django.conf import settings; print(settings.METRICS['host'])"],
        cwd=config.BASE_DIR,
        env={**env, "DJANGO_SETTINGS_MODULE": "orders_project.settings", **overrides},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert printed.strip() == host
