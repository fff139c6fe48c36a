"""deploy/prometheus/alerts.yml, promtool, and the metrics and labels a PromQL expression reads:
what the alert-rule and dashboard tests check against the real processes."""

from __future__ import annotations

import re
import shutil

import yaml

from orders_project.config import BASE_DIR

ALERTS_FILE = BASE_DIR / "deploy" / "prometheus" / "alerts.yml"


def alert_rules() -> list[dict]:
    document = yaml.safe_load(ALERTS_FILE.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is not installed: apt-get install prometheus (Debian) provides it"
    return path


GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
IDENTIFIER = re.compile(r"(?<![\w:.])[a-zA-Z_:][\w:]*(?![\w:])")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
KEYWORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
    "and", "or", "unless", "bool", "offset",
}


def selectors(expr: str) -> tuple[list[tuple[str, list[tuple[str, str, str]]]], set[str]]:
    """The metric selectors of a PromQL expression, each (name, [(label, operator, value)]), and
    the labels it groups by. Enough PromQL for these rules: no strings outside label matchers."""
    grouping = {label.strip() for labels in GROUPING.findall(expr) for label in labels.split(",") if label.strip()}
    expr = GROUPING.sub(" ", expr)
    # Label matchers out of the way first, each replaced by its index: {0}, {1}, ...
    matchers: list[list[tuple[str, str, str]]] = []

    def set_aside(braces: re.Match) -> str:
        matchers.append(MATCHER.findall(braces.group()))
        return f"{{{len(matchers) - 1}}}"

    expr = re.sub(r"\{[^}]*\}", set_aside, expr)
    found = []
    for match in IDENTIFIER.finditer(expr):
        rest = expr[match.end():].lstrip()
        if match.group() in KEYWORDS or rest.startswith("("):  # aggregations and functions
            continue
        index = re.match(r"\{(\d+)\}", rest)
        found.append((match.group(), matchers[int(index.group(1))] if index else []))
    return found, grouping


def label_matches(value: str, operator: str, wanted: str) -> bool:
    """Whether a label's ``value`` satisfies a matcher (``operator``, ``wanted``) of ``selectors``."""
    return {
        "=": value == wanted,
        "!=": value != wanted,
        "=~": re.fullmatch(wanted, value) is not None,
        "!~": re.fullmatch(wanted, value) is None,
    }[operator]
