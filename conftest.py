"""Fixtures shared by every app's tests."""

from __future__ import annotations

import copy

import pytest
from rest_framework.test import APIClient

from events.embedded_broker import EmbeddedKafkaBroker
from orders_project.config import BASE_DIR
from orders_project.testing import SEED_ORDER


@pytest.fixture
def seed_order() -> dict:
    """The request body of the seed's curl example."""
    return copy.deepcopy(SEED_ORDER)


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """A real Kafka-protocol broker process on a free port, for the whole test session."""
    broker = EmbeddedKafkaBroker(log_path=tmp_path_factory.mktemp("kafka") / "broker.log")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def kafka_settings(settings, kafka_broker):
    """Point the Django settings at the test broker."""
    settings.KAFKA = {**settings.KAFKA, "brokers": [kafka_broker.bootstrap_servers]}
    return settings.KAFKA


# The fault suite (marker "fault") restarts PostgreSQL and kills workers holding Redis
# messages: it runs where the database is PostgreSQL and the Celery broker Redis, as in the
# second half of CI. Elsewhere its tests are deselected, and the summary says so.
FAULT_REPORT: list[dict] = []


def _fault_suite_runs_here() -> bool:
    from django.conf import settings

    return (
        settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
        and settings.CELERY_BROKER_URL.startswith("redis://")
    )


def pytest_collection_modifyitems(config, items):
    if _fault_suite_runs_here():
        return
    faults = [item for item in items if item.get_closest_marker("fault")]
    if faults:
        config.hook.pytest_deselected(items=faults)
        items[:] = [item for item in items if not item.get_closest_marker("fault")]
        config.fault_suite_note = (
            f"fault suite: {len(faults)} tests need PostgreSQL and Redis; run with "
            "DATABASE_URL=postgres://... CELERY_BROKER_URL=redis://... bash bin/test -m fault"
        )


def pytest_terminal_summary(terminalreporter, config):
    note = getattr(config, "fault_suite_note", None)
    if note:
        terminalreporter.write_line(note)
    if FAULT_REPORT:
        from orders_project.testing import fault_table

        table = fault_table(FAULT_REPORT)
        terminalreporter.write_sep("=", "fault suite")
        for line in table.splitlines():
            terminalreporter.write_line(line)
        # docs/reliability.md quotes this file's table.
        report = BASE_DIR / "var" / "fault-report.md"
        report.parent.mkdir(exist_ok=True)
        report.write_text(table + "\n")
        terminalreporter.write_line(f"written to {report}")
