"""The dashboard and the alert rules against live processes and a real Prometheus.

One stack per module: the real `valora worker` and `valora scheduler` (and `valora api` once the
tree has it) on the test broker and a fresh Postgres database, traffic with duplicates, a bad
record and a period to close, and Debian's Prometheus scraping them every second with
deploy/prometheus/prometheus.yml's scrape jobs (targets swapped for the test's ports) and
deploy/prometheus/alerts.yml loaded. Then every dashboard and rule expression goes through
Prometheus's query API, and every metric it names must have series with the labels it uses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql
from sqlalchemy.engine import make_url

from invoicing.db import psycopg_connect_args
from streams.publish import publish
from tests.conftest import wait_for
from tests.deploy.promql import (
    ALERT_RULES,
    PROMETHEUS_CONFIG,
    Expression,
    alert_expressions,
    dashboard_expressions,
)
from tests.helpers import ISSUE_CATALOG, cli_env, native_event, run_cli, write_json

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STATUS_LABELS = frozenset({"status"})  # matched by value only when error traffic exists; checked for presence


def require_binary(name: str) -> str:
    """The path of a Prometheus binary; in CI (CI=true) its absence fails, elsewhere it skips."""
    path = shutil.which(name)
    if path:
        return path
    message = f"`{name}` is not installed (Debian: apt-get install prometheus; .ci/run installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout_s: float = 3.0, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def api_available() -> bool:
    """True once the tree has `valora api` (the API's panels are verified from then on)."""
    proc = subprocess.run([sys.executable, "-m", "valora.cli", "api", "--help"], capture_output=True, timeout=60)
    return proc.returncode == 0


@dataclass
class Processes:
    """Subprocesses with their logs; terminated (then killed) at teardown."""

    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        handle = (self.log_dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(args, env=env, stdout=handle, stderr=subprocess.STDOUT)
        handle.close()

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def assert_running(self) -> None:
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        assert not dead, f"exited: {dead}\n" + "\n".join(f"--- {n}\n{self.log(n)}" for n in dead)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@dataclass
class Live:
    prometheus: str  # http://127.0.0.1:port
    ports: dict[str, int]  # metrics/health port of worker and scheduler
    api: bool

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query; AssertionError naming Prometheus's error if it is refused."""
        return self._api("query", {"query": promql})

    def query_range(self, promql: str, seconds: int = 60, step_s: int = 5) -> list[dict[str, Any]]:
        end = time.time()
        return self._api("query_range", {"query": promql, "start": end - seconds, "end": end, "step": step_s})

    def series(self, selector: str) -> list[dict[str, str]]:
        return self._api("series", {"match[]": selector, "start": time.time() - 600})

    def _api(self, path: str, params: dict[str, Any]) -> Any:
        status, body = http_get(f"{self.prometheus}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout_s=10)
        payload = json.loads(body or b"{}")
        if status != 200 or payload.get("status") != "success":
            raise AssertionError(f"Prometheus refused {params}: {payload.get('errorType')}: {payload.get('error')}")
        data = payload["data"]
        return data["result"] if isinstance(data, dict) and "result" in data else data

    def value(self, promql: str) -> float:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else float("nan")


def _create_database(pg_admin_url: str) -> tuple[str, str]:
    name = f"valora_test_{uuid.uuid4().hex[:12]}"
    args = psycopg_connect_args(pg_admin_url) | {"dbname": "postgres", "connect_timeout": 5}
    with psycopg.connect(**args, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name, make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)


def _drop_database(pg_admin_url: str, name: str) -> None:
    args = psycopg_connect_args(pg_admin_url) | {"dbname": "postgres", "connect_timeout": 5}
    with psycopg.connect(**args, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def prometheus_config(targets: dict[str, str], rules: Path) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with the test's targets, a 1 s interval and the rules by path."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(rules)]
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] not in targets:
            continue
        job = {k: v for k, v in job.items() if not k.endswith("_sd_configs") and k != "static_configs"}
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        jobs.append(job)
    config["scrape_configs"] = jobs
    return config


def events(prefix: str, n: int) -> list[tuple[bytes, bytes]]:
    return [(b"acme", native_event(f"{prefix}{i}", "cus_1", "2026-01-20T00:00:00Z")) for i in range(n)]


def _start_api(procs: Processes, env: dict[str, str]) -> str:
    """Start `valora api` and send it a few requests; returns the host:port serving its metrics."""
    port, metrics_port = free_port(), free_port()
    procs.start("api", [sys.executable, "-m", "valora.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
                env | {"VALORA_METRICS_PORT": str(metrics_port)})
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_get(f"{base}/healthz")[0] == 200, timeout_s=60, message="valora api never answered")
    for path in ("/healthz", "/readyz", "/openapi.json", "/v1/invoices", "/v1/invoices", "/v1/no-such-route"):
        http_get(base + path)  # 200s, 401s without a key, a 404
    for candidate in (port, metrics_port):
        if b"valora_api_requests_total" in http_get(f"http://127.0.0.1:{candidate}/metrics")[1]:
            return f"127.0.0.1:{candidate}"
    raise AssertionError("valora api serves no valora_api_requests_total on its port or VALORA_METRICS_PORT")


@pytest.fixture(scope="module")
def live(broker: str, pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    prometheus = require_binary("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus-stack")
    name, database_url = _create_database(pg_admin_url)
    procs = Processes(tmp)
    try:
        prefix = f"t{uuid.uuid4().hex[:10]}."
        ports = {"valora-worker": free_port(), "valora-scheduler": free_port()}
        env = cli_env(broker, database_url, prefix, VALORA_METRICS_ADDR="127.0.0.1", VALORA_LOG_LEVEL="info")
        run_cli(["db", "upgrade"], env)
        run_cli(["catalog", "apply", str(write_json(tmp / "catalog.json", ISSUE_CATALOG))], env)
        first = events("a", 50)
        publish(broker, env["VALORA_EVENTS_TOPIC"], [*first, first[0], (b"acme", b"not json")])
        cli = [sys.executable, "-m", "valora.cli"]
        procs.start("worker", [*cli, "worker"], env | {"VALORA_METRICS_PORT": str(ports["valora-worker"])})
        procs.start("scheduler", [*cli, "scheduler", "--tick", "1"],
                    env | {"VALORA_METRICS_PORT": str(ports["valora-scheduler"])})
        targets = {job: f"127.0.0.1:{port}" for job, port in ports.items()}
        with_api = api_available()
        if with_api:
            targets["valora-api"] = _start_api(procs, env)
        prom_port = free_port()
        targets["prometheus"] = f"127.0.0.1:{prom_port}"
        config = tmp / "prometheus.yml"
        config.write_text(yaml.safe_dump(prometheus_config(targets, ALERT_RULES)))
        procs.start("prometheus", [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
                                   f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"])
        stack = Live(f"http://127.0.0.1:{prom_port}", dict(ports), with_api)
        _drive_traffic(stack, procs, broker, env["VALORA_EVENTS_TOPIC"], expected_targets=len(targets))
        yield stack
    finally:
        procs.close()
        _drop_database(pg_admin_url, name)


def _drive_traffic(live: Live, procs: Processes, broker: str, topic: str, expected_targets: int) -> None:
    """Wait for every target to be up, send a second wave after the close, and for the rules to evaluate."""

    def ready() -> bool:
        procs.assert_running()
        return http_get(f"{live.prometheus}/-/ready")[0] == 200

    wait_for(ready, timeout_s=60, message="Prometheus never became ready")

    def all_up() -> bool:
        procs.assert_running()
        up = live.query("up == 1")
        return len(up) == expected_targets

    wait_for(all_up, timeout_s=90, interval_s=0.5, message=f"not all targets up: {live.query('up')}")
    wait_for(lambda: live.value('sum(valora_scheduler_batch_processed_total{job="close"})') > 0, timeout_s=90,
             interval_s=0.5, message="the scheduler closed nothing")
    second = events("b", 30)  # January is closed now: these become late usage
    publish(broker, topic, [*second, second[0], (b"acme", b"{")])
    wait_for(lambda: live.value("sum(valora_worker_records_received_total)") >= 84, timeout_s=90, interval_s=0.5,
             message="Prometheus never saw both waves")
    wait_for(lambda: live.value("sum(valora_worker_late_usage_total)") > 0, timeout_s=60, interval_s=0.5,
             message="no late usage was counted")

    def rules_evaluated() -> bool:
        groups = live._api("rules", {})["groups"]
        rules = [r for g in groups for r in g["rules"]]
        errors = [f"{r['name']}: {r['lastError']}" for r in rules if r.get("health") == "err"]
        assert not errors, errors
        return bool(rules) and all(r.get("health") == "ok" for r in rules)

    wait_for(rules_evaluated, timeout_s=60, interval_s=0.5, message="Prometheus never evaluated every alert rule")
    # a rate needs two samples inside its window: wait for several
    wait_for(lambda: live.value('count_over_time(up{job="valora-worker"}[30s])') >= 5, timeout_s=30, interval_s=0.5)


def _expressions(live: Live) -> list[Expression]:
    return [e for e in dashboard_expressions() + alert_expressions() if live.api or not e.is_api]


def test_readiness_and_liveness_of_worker_and_scheduler(live: Live) -> None:
    for job, port in live.ports.items():
        status, body = http_get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200, (job, body)
        checks = json.loads(body)["checks"]
        assert all(v == "ok" for v in checks.values()), (job, checks)
        assert "database" in checks and "loop" in checks
        assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    assert "broker" in json.loads(http_get(f"http://127.0.0.1:{live.ports['valora-worker']}/readyz")[1])["checks"]


def test_every_dashboard_and_alert_expression_evaluates(live: Live) -> None:
    failures = []
    for expr in _expressions(live):
        try:
            live.query(expr.promql)
            if expr.source.startswith("dashboard"):
                live.query_range(expr.promql)
        except AssertionError as exc:
            failures.append(f"{expr.source}: {expr.promql}: {exc}")
    assert not failures, "\n".join(failures)


def test_every_dashboard_panel_shows_data(live: Live) -> None:
    """Each non-API dashboard query returns series after the traffic: no panel of the worker,
    scheduler or process rows is empty (errors and deferrals show as zero, not as nothing)."""
    empty = [f"{e.source}: {e.promql}" for e in dashboard_expressions() if not e.is_api and not live.query(e.promql)]
    assert not empty, "\n".join(empty)


def test_every_metric_has_series_with_the_labels_used(live: Live) -> None:
    problems = []
    for expr in _expressions(live):
        selectors = expr.selectors
        if not selectors:
            problems.append(f"{expr.source}: no metric found in {expr.promql}")
        labels_in_expr: set[str] = set()
        for sel in selectors:
            series = live.series(sel.metric)
            if not series:
                problems.append(f"{expr.source}: {sel.metric} has no series")
                continue
            present = set().union(*(s.keys() for s in series))
            labels_in_expr |= present
            missing = {label for label, _, _ in sel.matchers} - present
            if missing:
                problems.append(f"{expr.source}: {sel.metric} has no label {sorted(missing)}")
            by_value = sel.promql(skip=STATUS_LABELS)
            if not missing and not live.series(by_value):
                problems.append(f"{expr.source}: no series matches {by_value}")
        missing_grouping = expr.grouping_labels - labels_in_expr
        if missing_grouping:
            problems.append(f"{expr.source}: grouped by {sorted(missing_grouping)}, which no metric in it has")
    assert not problems, "\n".join(problems)


def test_traffic_is_counted_as_sent(live: Live) -> None:
    """The numbers behind the panels are the traffic's: 84 records, 2 duplicates, 2 bad JSON."""
    assert live.value("sum(valora_worker_records_received_total)") == 84
    assert live.value("sum(valora_worker_records_duplicate_total)") == 2
    assert live.value('sum(valora_worker_records_dead_lettered_total{reason="invalid_json"})') == 2
    assert live.value('sum(valora_scheduler_job_runs_total{job="close"})') >= 1
    for job in live.ports:
        assert live.value(f'sum(process_resident_memory_bytes{{job="{job}"}})') > 10_000_000, job


def test_api_panels_have_data(live: Live) -> None:
    if not live.api:
        pytest.skip("`valora api` is not in this tree: the API row and ValoraApiErrors are not verified")
    assert {"route", "method", "status"} <= set().union(*(s.keys() for s in live.series("valora_api_requests_total")))
    buckets = live.series("valora_api_request_duration_seconds_bucket")
    assert {"route", "method", "le"} <= set().union(*(s.keys() for s in buckets))
    assert not any("acme" in json.dumps(s) for s in live.series('{__name__=~"valora_api_.*"}'))
    assert live.value('sum(process_resident_memory_bytes{job="valora-api"})') > 10_000_000
    assert live.value('sum(valora_api_requests_total{status="401"})') >= 2  # the unauthenticated requests


@pytest.mark.parametrize(
    ("args", "path"), [(["check", "config"], PROMETHEUS_CONFIG), (["check", "rules"], ALERT_RULES)]
)
def test_promtool_accepts_the_deploy_files(args: list[str], path: Path) -> None:
    proc = subprocess.run([require_binary("promtool"), *args, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr
