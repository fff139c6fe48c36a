"""config.yaml with environment overrides."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from devtools import settings_table
from orders_project import config


@pytest.fixture
def environment(monkeypatch):
    monkeypatch.setattr(config.env, "ENVIRON", {})
    return config.env.ENVIRON


def test_yaml_defaults_are_the_seeds(environment):
    loaded = config.load_config()

    assert loaded["kafka"]["brokers"] == ["localhost:9092"]
    assert loaded["kafka"]["group_id"] == "order-service-group"
    assert loaded["http"]["port"] == "8080"
    assert {key: loaded["notification"][key] for key in ("email_enabled", "sms_enabled", "email_from")} == {
        "email_enabled": True,
        "sms_enabled": False,
        "email_from": "noreply@ordersystem.com",
    }
    assert loaded["payments"]["success_rate"] == 0.85
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
            "RECONCILER_INTERVAL": "0.5",
            "DATABASE_URL": "postgres://u@db:5432/orders",
            "CELERY_BROKER_URL": "redis://redis:6379/0",
        }
    )

    loaded = config.load_config()

    assert loaded["notification"]["sms_enabled"] is True
    assert loaded["orders"]["max_items"] == 5
    assert loaded["reconciler"]["interval"] == 0.5
    assert loaded["database"]["url"] == "postgres://u@db:5432/orders"
    assert loaded["celery"]["broker_url"] == "redis://redis:6379/0"


def test_bad_value_is_an_error(environment):
    environment.update({"ORDERS_MAX_ITEMS": "many"})

    with pytest.raises(ValueError):
        config.load_config()


def test_config_file_can_be_replaced(environment, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("environment: other\nhttp:\n  port: '9000'\n")
    environment.update({"CONFIG_FILE": str(other), "HTTP_PORT": "9001"})

    assert config.load_config() == {"environment": "other", "http": {"port": "9001"}}


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


def test_settings_make_no_directory_the_local_default_s_processes_make_them(environment, tmp_path):
    database, broker = tmp_path / "data" / "db.sqlite3", tmp_path / "queue" / "broker.sqlite3"
    urls = {"DATABASE_URL": f"sqlite:///{database}", "CELERY_BROKER_URL": f"sqla+sqlite:///{broker}"}
    subprocess.run(
        [sys.executable, "-c", "from django.conf import settings; settings.DATABASES"],
        cwd=config.BASE_DIR,
        env={**os.environ, **urls, "DJANGO_SETTINGS_MODULE": "orders_project.settings"},
        check=True,
    )
    assert not database.parent.exists() and not broker.parent.exists()

    # What bin/run-local and the test session do before they open the files.
    environment.update(urls)
    config.create_local_directories(config.load_config())

    assert database.parent.is_dir() and broker.parent.is_dir()


def test_every_setting_is_described_by_the_comment_above_it():
    undescribed = [setting.variable for setting in settings_table.settings() if not setting.description]
    assert not undescribed, f"config.yaml: write each one's description in a comment right above it: {undescribed}"


def test_readme_lists_every_setting_as_config_yaml_says():
    readme = settings_table.README_PATH.read_text(encoding="utf-8")
    assert settings_table.readme_block(readme) == settings_table.table(), (
        f"README.md's table of settings differs from config.yaml: run {settings_table.COMMAND}"
    )


def test_table_row_per_leaf_with_its_variable_default_and_comment(tmp_path):
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        "# The file's own words, apart.\n\n"
        "# Section words: not a setting's.\n"
        "kafka:\n"
        "  # Bootstrap servers, comma-separated\n  # (or indexed).\n"
        "  brokers:\n    - a:9092\n    - b:9092\n"
        "  # One | two.\n"
        "  client: \"\"\n"
        "  nested:\n    # Deep.\n    enabled: true\n"
        "undescribed: 3\n"
    )

    assert settings_table.table(config_file).splitlines()[2:] == [
        "| `KAFKA_BROKERS` | `a:9092,b:9092` | Bootstrap servers, comma-separated (or indexed). |",
        "| `KAFKA_CLIENT` | empty | One \\| two. |",
        "| `KAFKA_NESTED_ENABLED` | `true` | Deep. |",
        "| `UNDESCRIBED` | `3` |  |",
    ]


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("redis://redis:6379/0", {"visibility_timeout": 60, "unacked_restore_interval": 5, "unacked_restore_throttle": 1}),
        ("rediss://redis:6380/0", {"visibility_timeout": 60, "unacked_restore_interval": 5, "unacked_restore_throttle": 1}),
        # kombu's SQL transport hands its options to create_engine(), which refuses Redis' ones.
        ("sqla+sqlite:///var/celery-broker.sqlite3", {}),
    ],
)
def test_redis_transport_options_go_to_redis_only(url, options):
    assert config.celery_transport_options(url, visibility_timeout=60) == options


def test_relative_sql_broker_path_starts_at_the_project():
    assert config.celery_broker_url("sqla+sqlite:///var/b.sqlite3") == f"sqla+sqlite:///{config.BASE_DIR / 'var' / 'b.sqlite3'}"
    assert config.celery_broker_url("sqla+sqlite:////srv/b.sqlite3") == "sqla+sqlite:////srv/b.sqlite3"
    assert config.celery_broker_url("redis://redis:6379/0") == "redis://redis:6379/0"
