"""Reading the deploy files: the dashboard's and the alert rules' PromQL, and the selectors in it.

Not a PromQL parser: Valora's expressions use plain selectors (`name{label="v"}`), functions,
`by (...)` groupings and subqueries, which these patterns cover; an expression they cannot read
yields no selector and fails the test that expects one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "valora.json"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERT_RULES = DEPLOY / "prometheus" / "alerts.yml"

# Grafana's built-in range variable; the test scrapes every second, so 30 s holds many samples.
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "5m"}

_METRIC = re.compile(r"\b((?:valora|process)_[a-zA-Z0-9_]+|up)\b(\s*\{[^}]*\})?")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, op, value)

    def promql(self, skip: frozenset[str] = frozenset()) -> str:
        """The selector, without the matchers on the labels in `skip`."""
        kept = [m for m in self.matchers if m[0] not in skip]
        inner = ", ".join(f'{label}{op}"{value}"' for label, op, value in kept)
        return f"{self.metric}{{{inner}}}" if inner else self.metric


@dataclass(frozen=True)
class Expression:
    source: str  # "dashboard: <panel title>" or "alert: <name>"
    promql: str

    @property
    def selectors(self) -> list[Selector]:
        found = []
        for match in _METRIC.finditer(self.promql):
            braces = match.group(2) or ""
            found.append(Selector(match.group(1), tuple(_MATCHER.findall(braces))))
        return found

    @property
    def grouping_labels(self) -> set[str]:
        groups = _GROUPING.findall(self.promql)
        return {label.strip() for group in groups for label in group.split(",") if label.strip()}

    @property
    def is_api(self) -> bool:
        return "valora_api_" in self.promql or "valora-api" in self.promql


def dashboard_expressions(path: Path = DASHBOARD) -> list[Expression]:
    """Every target expression of every panel (rows included), Grafana variables substituted."""
    dashboard = json.loads(path.read_text())
    out = []

    def walk(panels: list[dict[str, object]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))  # type: ignore[arg-type]
            for target in panel.get("targets", []):  # type: ignore[attr-defined]
                expr = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                out.append(Expression(f"dashboard: {panel['title']}", expr))

    walk(dashboard["panels"])
    return out


def alert_expressions(path: Path = ALERT_RULES) -> list[Expression]:
    rules = yaml.safe_load(path.read_text())
    return [
        Expression(f"alert: {rule.get('alert') or rule.get('record')}", str(rule["expr"]).strip())
        for group in rules["groups"]
        for rule in group["rules"]
    ]
