"""docker-compose.yml and deploy/k8s/ run the commands of devtools/processes.py.

docker-compose.yml is rendered by the real Docker Compose v2 (devtools/harness/docker_compose.py;
the fixtures compose_cli, compose_config and services are the root conftest.py's). The Kubernetes
manifests are parsed as YAML.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devtools.harness.docker_compose import INTERNAL_TOKEN, METRICS_PORTS, REQUIRED_ENV, SECRET_KEY, render
from devtools.processes import process_commands
from events.contract import TOPIC_DLQ, TOPIC_PARTITIONS
from orders_project.security import SIMULATED_GATEWAY

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "deploy" / "k8s"

APP_SERVICES = ("web", "relay", "bridge", "worker", "webhook-worker", "reconciler")
WORKERS = ("worker", "webhook-worker")
# Settings that are secrets: in a Kubernetes Secret, never the ConfigMap.
SECRET_SETTINGS = {"DJANGO_SECRET_KEY", "DATABASE_URL", "HTTP_INTERNAL_TOKEN", "EMAIL_USER", "EMAIL_PASSWORD"}
# The compose stack is a demo on the simulated gateway; the k8s manifests refuse it (real payments),
# so they need no database for its ledger.
DEMO_SETTINGS = {"PAYMENTS_SIMULATOR_DATABASE_URL"}
ALL_SERVICES = {"kafka", "kafka-ui", "postgres", "redis", "migrate", "topics", *APP_SERVICES}


def settings_refusal(environment: dict[str, str]) -> str | None:
    """The ImproperlyConfigured line Django's settings stop with in ``environment`` (the app
    containers' one, with random secrets instead of the placeholders), or None if they load."""
    chosen = {**environment, "DJANGO_SECRET_KEY": secrets.token_urlsafe(50), "HTTP_INTERNAL_TOKEN": secrets.token_urlsafe(32)}
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", ""), "DJANGO_SETTINGS_MODULE": "orders_project.settings", **chosen},
        capture_output=True,
        text=True,
        timeout=120,
    )
    refusals = [line for line in result.stderr.splitlines() if line.startswith("django.core.exceptions.ImproperlyConfigured")]
    assert result.returncode == 0 or refusals, result.stderr
    return refusals[-1] if refusals else None


def expected_commands() -> dict[str, list[str]]:
    """process_commands() as a container runs them: `python` for sys.executable, and the modules
    run with `-m` (gunicorn, celery) by their own scripts."""
    commands = {}
    for name, argv in process_commands().items():
        assert argv[0] == sys.executable
        args = argv[1:]
        commands[name] = args[1:] if args[0] == "-m" else ["python", *args]
    return commands


# Migrations, then the operator groups (README, "Admin actions"), as bin/run-local does.
MIGRATE_COMMAND = ["sh", "-c", "python manage.py migrate --noinput && python manage.py create_operator_groups"]
# The demo stack's simulated provider has a database of its own to migrate as well.
COMPOSE_MIGRATE_COMMAND = [
    "sh",
    "-c",
    "python manage.py migrate --noinput && python manage.py migrate --database provider --noinput"
    " && python manage.py create_operator_groups",
]


def test_expected_commands_follow_process_commands():
    commands = expected_commands()
    assert commands["web"] == ["gunicorn", "-c", "gunicorn.conf.py", "orders_project.wsgi"]
    assert commands["relay"] == ["python", "manage.py", "publish_pending_events"]
    assert commands["bridge"] == ["python", "manage.py", "run_kafka_bridge"]
    assert commands["reconciler"] == ["python", "manage.py", "run_reconciler"]
    assert commands["worker"][:5] == ["celery", "-A", "orders_project", "--quiet", "worker"]
    assert commands["worker"][commands["worker"].index("--hostname") + 1] == "worker@%h"
    # Each worker takes one queue: the pipeline's, or the webhooks' (slow receivers hold only theirs).
    assert commands["worker"][commands["worker"].index("--serves") + 1] == "pipeline"
    assert commands["webhook-worker"][commands["webhook-worker"].index("--serves") + 1] == "webhooks"
    assert commands["webhook-worker"][commands["webhook-worker"].index("--hostname") + 1] == "webhook-worker@%h"


# --- docker-compose.yml, rendered by Docker Compose ---------------------------------------------


@pytest.mark.parametrize("variable", sorted(REQUIRED_ENV))
def test_compose_refuses_to_render_without_each_secret(compose_cli, tmp_path_factory, variable):
    result = render(compose_cli, tmp_path_factory, **{name: value for name, value in REQUIRED_ENV.items() if name != variable})
    assert result.returncode != 0
    assert f"required variable {variable} is missing" in result.stderr


def test_compose_has_every_service(services):
    assert ALL_SERVICES <= set(services)


def test_kafka_runs_in_kraft_mode_without_zookeeper(compose_config, services):
    kafka = services["kafka"]
    assert kafka["image"] == "apache/kafka:3.9.1"
    roles = kafka["environment"]["KAFKA_PROCESS_ROLES"].split(",")
    assert "controller" in roles and "broker" in roles
    assert kafka["environment"]["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"
    assert "zookeeper" not in json.dumps(compose_config).lower()


def test_kafka_ui_is_published_on_8081_of_this_host_behind_a_login(services):
    ports = services["kafka-ui"]["ports"]
    assert [{"host_ip": "127.0.0.1", "published": "8081", "target": 8080}] == [
        {"host_ip": port.get("host_ip"), "published": str(port.get("published")), "target": port.get("target")}
        for port in ports
    ]
    environment = services["kafka-ui"]["environment"]
    assert environment["AUTH_TYPE"] == "LOGIN_FORM"
    assert environment["SPRING_SECURITY_USER_NAME"] == "admin"
    assert environment["SPRING_SECURITY_USER_PASSWORD"] == REQUIRED_ENV["KAFKA_UI_PASSWORD"]


def test_every_published_port_is_bound_to_this_host_only(services):
    published = [(name, port) for name, service in services.items() for port in service.get("ports", [])]
    assert published
    assert [(name, port.get("host_ip")) for name, port in published] == [(name, "127.0.0.1") for name, _ in published]


def test_kafka_and_postgres_keep_their_data_on_named_volumes(compose_config, services):
    assert {"kafka-data", "postgres-data"} <= set(compose_config["volumes"])
    for service, volume in (("kafka", "kafka-data"), ("postgres", "postgres-data")):
        assert volume in [mount["source"] for mount in services[service]["volumes"] if mount["type"] == "volume"]


def test_postgres_makes_the_simulated_providers_database_on_its_first_start(services):
    (script,) = [mount for mount in services["postgres"]["volumes"] if mount["type"] == "bind"]
    assert script["target"] == "/docker-entrypoint-initdb.d/simulated-provider.sql"
    assert "CREATE DATABASE simulated_provider OWNER orders;" in Path(script["source"]).read_text()


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_runs_its_process_command(services, name):
    assert services[name]["command"] == expected_commands()[name]


@pytest.mark.parametrize("name", WORKERS)
def test_worker_hostname_is_its_name_at_host(services, name):
    command = services[name]["command"]
    assert command[command.index("--hostname") + 1] == f"{name}@%h"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_restarts_and_has_a_healthcheck(services, name):
    service = services[name]
    assert service["restart"] == "unless-stopped"
    healthcheck = service["healthcheck"]
    assert not healthcheck.get("disable")
    assert healthcheck["test"][0] in ("CMD", "CMD-SHELL")


def test_healthchecks_probe_each_process(services):
    def probe(name):
        return " ".join(services[name]["healthcheck"]["test"][1:])

    assert "http://127.0.0.1:8080/health/ready" in probe("web")
    assert "'Authorization': 'Bearer ' + os.environ['HTTP_INTERNAL_TOKEN']" in probe("web")
    assert "http://127.0.0.1:9101/metrics" in probe("relay")
    assert "http://127.0.0.1:9102/metrics" in probe("bridge")
    assert "http://127.0.0.1:9104/metrics" in probe("reconciler")
    for name in WORKERS:
        assert services[name]["healthcheck"]["test"][0] == "CMD-SHELL"
        # $$ in the file is a literal $ for the shell; `config` prints it escaped again.
        assert re.fullmatch(rf"celery -A orders_project inspect ping -d {name}@\$\$?HOSTNAME", probe(name))


@pytest.mark.parametrize("name", sorted(METRICS_PORTS))
def test_metrics_ports_are_exposed_to_the_scraper(services, name):
    assert str(METRICS_PORTS[name]) in [str(port) for port in services[name]["expose"]]


@pytest.mark.parametrize("name", ("relay", "bridge", *WORKERS, "reconciler"))
def test_consumers_get_time_to_stop_cleanly(services, name):
    assert services[name]["stop_grace_period"] == "30s"


@pytest.mark.parametrize("name", ("migrate", "topics", *APP_SERVICES))
def test_app_containers_run_in_production(services, name):
    environment = services[name]["environment"]
    assert environment["ENVIRONMENT"] == "production"
    assert environment["DJANGO_DEBUG"] == "false"
    assert environment["DJANGO_SECRET_KEY"] == SECRET_KEY
    assert environment["EMAIL_HOST"] == REQUIRED_ENV["EMAIL_HOST"]
    assert (environment["EMAIL_PORT"], environment["EMAIL_USE_TLS"]) == ("587", "true")
    # No TLS proxy in the compose file: web on this host only, over plain HTTP.
    assert environment["SECURITY_SSL_REDIRECT"] == "false"
    assert environment["API_REQUIRE_AUTH"] == "true"
    assert environment["DATABASE_URL"] == "postgres://orders:orders@postgres:5432/orders"
    assert environment["KAFKA_BROKERS"] == "kafka:9092"
    assert environment["CELERY_BROKER_URL"] == "redis://redis:6379/0"
    assert environment["CACHE_URL"] == "rediscache://redis:6379/1"
    assert environment["HTTP_ALLOWED_HOSTS"] == "localhost,127.0.0.1,web"
    assert environment["HTTP_INTERNAL_TOKEN"] == INTERNAL_TOKEN
    assert environment["HTTP_NUM_PROXIES"] == "0"
    assert (environment["HTTP_HOST"], environment["HTTP_PORT"]) == ("0.0.0.0", "8080")
    assert environment["METRICS_RELAY_PORT"] == str(METRICS_PORTS["relay"])
    assert environment["METRICS_BRIDGE_PORT"] == str(METRICS_PORTS["bridge"])
    assert environment["METRICS_WORKER_PORT"] == str(METRICS_PORTS["worker"])
    assert environment["METRICS_WEBHOOK_WORKER_PORT"] == str(METRICS_PORTS["webhook-worker"])
    assert environment["METRICS_RECONCILER_PORT"] == str(METRICS_PORTS["reconciler"])
    # A demo: the simulated gateway, allowed knowingly (production refuses it otherwise).
    assert (environment["PAYMENTS_GATEWAY_CLASS"], environment["PAYMENTS_ALLOW_SIMULATOR"]) == (SIMULATED_GATEWAY, "true")
    assert environment["PAYMENTS_SIMULATOR_DATABASE_URL"] == "postgres://orders:orders@postgres:5432/simulated_provider"


def test_the_compose_environment_passes_the_production_start_checks(services):
    assert settings_refusal(services["web"]["environment"]) is None


def test_app_containers_share_one_environment_and_one_image(services):
    names = ("migrate", "topics", *APP_SERVICES)
    assert all(services[name]["environment"] == services["web"]["environment"] for name in names)
    assert {services[name]["image"] for name in names} == {"order-processing:latest"}
    # One build of the image: services building the same tag at once collide.
    assert [name for name in names if services[name].get("build")] == ["migrate"]


def test_migrations_and_topics_run_once_before_the_app(services):
    assert services["migrate"]["command"] == COMPOSE_MIGRATE_COMMAND
    assert services["topics"]["command"] == ["python", "manage.py", "setup_kafka_topics"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in ("migrate", "topics"):
        assert services[name]["restart"] == "no"
    for name in APP_SERVICES:
        depends_on = services[name]["depends_on"]
        assert depends_on["migrate"]["condition"] == "service_completed_successfully"
        assert depends_on["topics"]["condition"] == "service_completed_successfully"
        assert depends_on["postgres"]["condition"] == "service_healthy"
    for name in ("web", "relay", "bridge"):
        assert services[name]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in ("web", "bridge", *WORKERS):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    # The reconciler works on the database alone (its re-drives go through the outbox): it waits
    # for neither Kafka nor Redis.
    assert not {"kafka", "redis"} & set(services["reconciler"]["depends_on"])


def test_only_one_web_publishes_port_8080(services):
    assert [port["published"] for port in services["web"]["ports"]] == ["8080"]
    assert all(not services[name].get("ports") for name in ("relay", "bridge", *WORKERS, "reconciler"))


def test_k8s_configmap_has_the_compose_settings(services, k8s):
    compose_settings = set(services["web"]["environment"]) - SECRET_SETTINGS - DEMO_SETTINGS
    assert set(k8s.configmap["data"]) == compose_settings


# --- deploy/k8s/ -------------------------------------------------------------------------------


class K8s:
    def __init__(self, documents: list[dict]):
        self.documents = documents

    def of_kind(self, kind: str) -> list[dict]:
        return [document for document in self.documents if document["kind"] == kind]

    @property
    def configmap(self) -> dict:
        (configmap,) = self.of_kind("ConfigMap")
        return configmap

    @property
    def secret(self) -> dict:
        (secret,) = self.of_kind("Secret")
        return secret

    def deployment(self, component: str) -> dict:
        (deployment,) = [
            deployment
            for deployment in self.of_kind("Deployment")
            if deployment["metadata"]["labels"]["app.kubernetes.io/component"] == component
        ]
        return deployment


def _containers(pod_spec: dict) -> list[dict]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def _argv(container: dict) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


@pytest.fixture(scope="module")
def k8s() -> K8s:
    documents = [
        document
        for path in sorted(K8S_DIR.glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if document
    ]
    for document in documents:
        assert {"apiVersion", "kind", "metadata"} <= set(document)
    return K8s(documents)


def test_k8s_has_one_deployment_per_process(k8s):
    components = [d["metadata"]["labels"]["app.kubernetes.io/component"] for d in k8s.of_kind("Deployment")]
    assert sorted(components) == sorted(APP_SERVICES)


@pytest.mark.parametrize("name", APP_SERVICES)
def test_k8s_deployment_runs_the_process_command(k8s, name):
    (container,) = k8s.deployment(name)["spec"]["template"]["spec"]["containers"]
    assert _argv(container) == expected_commands()[name]
    assert container["image"] == "order-processing:latest"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_k8s_deployment_is_configured_and_hardened(k8s, name):
    deployment = k8s.deployment(name)
    selector = deployment["spec"]["selector"]["matchLabels"]
    pod = deployment["spec"]["template"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    pod_spec = pod["spec"]
    assert pod_spec["terminationGracePeriodSeconds"] == 30
    for container in pod_spec["containers"]:
        sources = container["envFrom"]
        assert {"configMapRef": {"name": k8s.configmap["metadata"]["name"]}} in sources
        assert {"secretRef": {"name": k8s.secret["metadata"]["name"]}} in sources
        security = {**pod_spec.get("securityContext", {}), **container.get("securityContext", {})}
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == 10001
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert {"cpu", "memory"} <= set(container["resources"]["limits"])
        assert "livenessProbe" in container


def test_k8s_web_probes_health_and_readiness(k8s, services):
    deployment = k8s.deployment("web")
    assert deployment["spec"]["replicas"] == 2
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert 8080 in [port["containerPort"] for port in container["ports"]]
    liveness = container["livenessProbe"]["httpGet"]
    assert (liveness["path"], liveness["port"]) == ("/health", 8080)
    # Django answers only HTTP_ALLOWED_HOSTS: the probe must send one of them; liveness is open.
    allowed = k8s.configmap["data"]["HTTP_ALLOWED_HOSTS"].split(",")
    hosts = [header["value"] for header in liveness.get("httpHeaders", []) if header["name"].lower() == "host"]
    assert hosts and hosts[0] in allowed
    assert not [header for header in liveness.get("httpHeaders", []) if header["name"].lower() == "authorization"]
    # Readiness sends the Secret's internal token from inside the container, as compose's healthcheck.
    compose_test = services["web"]["healthcheck"]["test"]
    assert container["readinessProbe"]["exec"]["command"] == compose_test[1:]
    assert "http://127.0.0.1:8080/health/ready" in compose_test[-1] and "127.0.0.1" in allowed
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == ("8080", "/metrics")


def test_k8s_web_service_maps_80_to_8080(k8s):
    (service,) = k8s.of_kind("Service")
    (port,) = service["spec"]["ports"]
    (container,) = k8s.deployment("web")["spec"]["template"]["spec"]["containers"]
    target = {p["name"]: p["containerPort"] for p in container["ports"]}.get(port["targetPort"], port["targetPort"])
    assert (port["port"], target) == (80, 8080)
    assert service["spec"]["selector"].items() <= k8s.deployment("web")["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("name", ("relay", "bridge", "reconciler"))
def test_k8s_relay_bridge_and_reconciler_are_probed_and_scraped_on_their_metrics_port(k8s, name):
    deployment = k8s.deployment(name)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    probe = container["livenessProbe"]["httpGet"]
    assert (probe["path"], probe["port"]) == ("/metrics", METRICS_PORTS[name])
    assert METRICS_PORTS[name] in [port["containerPort"] for port in container["ports"]]
    assert k8s.configmap["data"][f"METRICS_{name.upper()}_PORT"] == str(METRICS_PORTS[name])
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == (str(METRICS_PORTS[name]), "/metrics")


@pytest.mark.parametrize("name", WORKERS)
def test_k8s_workers_are_probed_with_a_celery_ping_and_scraped(k8s, name):
    deployment = k8s.deployment(name)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    command = container["livenessProbe"]["exec"]["command"]
    assert command[:2] == ["sh", "-c"]
    assert command[2].startswith("celery -A orders_project inspect ping -d ")
    assert command[2].replace('"', "").endswith(f" {name}@$HOSTNAME")
    assert METRICS_PORTS[name] in [port["containerPort"] for port in container["ports"]]
    assert k8s.configmap["data"][f"METRICS_{name.upper().replace('-', '_')}_PORT"] == str(METRICS_PORTS[name])
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(METRICS_PORTS[name])


def test_k8s_bridge_replicas_do_not_exceed_the_partitions(k8s):
    partitions = max(count for topic, count in TOPIC_PARTITIONS.items() if topic != TOPIC_DLQ)
    assert k8s.deployment("bridge")["spec"]["replicas"] == partitions == 3


def test_k8s_job_migrates_and_creates_the_topics(k8s):
    (job,) = k8s.of_kind("Job")
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["restartPolicy"] in ("OnFailure", "Never")
    commands = [_argv(container) for container in _containers(pod_spec)]
    assert commands == [
        MIGRATE_COMMAND,
        ["python", "manage.py", "setup_kafka_topics"],
    ]
    for container in _containers(pod_spec):
        assert {"configMapRef": {"name": k8s.configmap["metadata"]["name"]}} in container["envFrom"]
        assert {"secretRef": {"name": k8s.secret["metadata"]["name"]}} in container["envFrom"]
        security = {**pod_spec.get("securityContext", {}), **container.get("securityContext", {})}
        assert security["runAsNonRoot"] is True


def test_k8s_configmap_is_production_and_holds_no_secrets(k8s):
    data = k8s.configmap["data"]
    assert data["ENVIRONMENT"] == "production"
    assert data["API_REQUIRE_AUTH"] == "true"
    assert data["DJANGO_DEBUG"] == "false"
    # Behind the Ingress, which ends TLS.
    assert data["SECURITY_SSL_REDIRECT"] == "true"
    assert all(origin.startswith("https://") for origin in data["SECURITY_CSRF_TRUSTED_ORIGINS"].split(","))
    assert "*" not in data["HTTP_ALLOWED_HOSTS"].split(",")
    assert all(isinstance(value, str) for value in data.values())
    assert not SECRET_SETTINGS & set(data)
    assert SECRET_SETTINGS <= set(k8s.secret["stringData"])
    # Behind the Ingress: the throttles key on the address it appends to X-Forwarded-For.
    assert data["HTTP_NUM_PROXIES"] == "1"


def test_k8s_pods_refuse_the_simulator_until_a_provider_adapter_is_named(k8s):
    environment = {**k8s.configmap["data"], **k8s.secret["stringData"], "EMAIL_HOST": "smtp.example.com"}
    environment["DATABASE_URL"] = "sqlite:///:memory:"

    assert "PAYMENTS_ALLOW_SIMULATOR=true" in settings_refusal(environment)
    assert settings_refusal({**environment, "PAYMENTS_GATEWAY_CLASS": "payments.tests.test_gateway.AlwaysTimesOut"}) is None


def test_k8s_example_secret_holds_placeholders_the_settings_refuse(k8s):
    from orders_project.security import secret_problem

    assert "placeholder" in secret_problem(k8s.secret["stringData"]["DJANGO_SECRET_KEY"])
    assert "placeholder" in secret_problem(k8s.secret["stringData"]["HTTP_INTERNAL_TOKEN"])
    assert all("REPLACE-ME" in value for value in k8s.secret["stringData"].values())
