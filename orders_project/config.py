"""Load ``config.yaml`` and apply environment overrides.

This is the only place that reads the process environment. Each leaf of the YAML
tree can be overridden by the variable named after its path (``kafka.group_id`` ->
``KAFKA_GROUP_ID``), cast to the type of the YAML default. Lists accept either a
comma-separated value (``KAFKA_BROKERS=a:9092,b:9092``) or indexed variables in
the Viper style (``KAFKA_BROKERS_0=a:9092``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import environ
import yaml

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()


def _indexed_list(name: str) -> list[str] | None:
    values = []
    while f"{name}_{len(values)}" in env.ENVIRON:
        values.append(env.str(f"{name}_{len(values)}"))
    return values or None


def _override(node: Any, path: tuple[str, ...]) -> Any:
    if isinstance(node, dict):
        return {key: _override(value, (*path, str(key))) for key, value in node.items()}
    name = "_".join(path).upper()
    if isinstance(node, list):
        if name in env.ENVIRON:
            return env.list(name)
        return _indexed_list(name) or node
    if isinstance(node, bool):  # before int: bool is an int subclass
        return env.bool(name, default=node)
    if isinstance(node, int):
        return env.int(name, default=node)
    if isinstance(node, float):
        return env.float(name, default=node)
    return env.str(name, default=node)


def load_config() -> dict[str, Any]:
    """Return the configuration tree: the YAML file named by CONFIG_FILE, overridden by the environment."""
    config_path = Path(env.str("CONFIG_FILE", default=str(BASE_DIR / "config.yaml")))
    with config_path.open(encoding="utf-8") as handle:
        raw = yaml.safe_load(handle) or {}
    return _override(raw, ())
