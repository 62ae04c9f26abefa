"""The metrics and health listener: what /healthz and /readyz answer, and where it binds."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from tests.helpers import run_cli
from valora import telemetry
from valora.service_probes import ServiceError
from valora.settings import Settings
from valora.telemetry import Health, serve_metrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def state() -> dict[str, object]:
    return {"beat": None, "problem": None, "failure": None}


@pytest.fixture
def served(state: dict[str, object]) -> Iterator[tuple[str, FakeClock]]:
    clock = FakeClock()
    registry = CollectorRegistry()
    Counter("valora_test_things_total", "Things", registry=registry).inc(3)
    health = Health(
        heartbeat=lambda: state["beat"],  # type: ignore[arg-type, return-value]
        stall_after_s=60,
        checks={"database": lambda: state["problem"]},  # type: ignore[dict-item, return-value]
        failure=lambda: state["failure"],  # type: ignore[arg-type, return-value]
        clock=clock,
    )
    port = free_port()
    server = serve_metrics("127.0.0.1", port, registry, health)
    try:
        yield f"http://127.0.0.1:{port}", clock
    finally:
        server.shutdown()
        server.server_close()


def test_ready_only_when_the_loop_beats_and_every_check_passes(
    served: tuple[str, FakeClock], state: dict[str, object]
) -> None:
    base, clock = served
    status, body = get(base + "/readyz")
    assert status == 503 and json.loads(body)["checks"]["loop"] == "starting"
    state["beat"] = clock.now - 5
    status, body = get(base + "/readyz")
    assert status == 200, body
    assert json.loads(body) == {"status": "ready", "checks": {"loop": "ok", "database": "ok"}}
    state["problem"] = "connection refused"
    status, body = get(base + "/readyz")
    assert status == 503 and json.loads(body)["checks"]["database"] == "connection refused"
    state["problem"] = None
    clock.now += 61  # no beat for 66 s: stuck
    status, body = get(base + "/readyz")
    assert status == 503 and json.loads(body)["checks"]["loop"].startswith("stuck: no progress for 66 s")


def test_loop_gauges_follow_the_heartbeat(served: tuple[str, FakeClock], state: dict[str, object]) -> None:
    base, clock = served
    text = get(base + "/metrics")[1].decode()
    assert "valora_loop_heartbeat_age_seconds NaN" in text and "valora_loop_stalled 0.0" in text
    state["beat"] = clock.now - 12
    text = get(base + "/metrics")[1].decode()
    assert "valora_loop_heartbeat_age_seconds 12.0" in text and "valora_loop_stalled 0.0" in text
    clock.now += 60
    assert "valora_loop_stalled 1.0" in get(base + "/metrics")[1].decode()


def test_liveness_fails_once_the_loop_died(served: tuple[str, FakeClock], state: dict[str, object]) -> None:
    base, _ = served
    assert get(base + "/healthz") == (200, b'{"status": "ok", "failure": null}')
    state["failure"] = "worker stopped: boom"
    status, body = get(base + "/healthz")
    assert status == 503 and json.loads(body)["failure"] == "worker stopped: boom"
    assert get(base + "/readyz")[0] == 503


def test_a_probe_that_raises_reports_not_ready() -> None:
    clock = FakeClock()

    def broken() -> str | None:
        raise RuntimeError("probe bug")

    health = Health(lambda: clock.now, 60, {"database": broken}, clock=clock)
    port = free_port()
    server = serve_metrics("127.0.0.1", port, CollectorRegistry(), health)
    try:
        status, body = get(f"http://127.0.0.1:{port}/readyz")
    finally:
        server.shutdown()
        server.server_close()
    assert status == 503 and json.loads(body)["checks"]["database"] == "RuntimeError: probe bug"


def test_metrics_include_the_process_collector(served: tuple[str, FakeClock]) -> None:
    base, _ = served
    status, body = get(base + "/metrics")
    text = body.decode()
    assert status == 200
    assert "valora_test_things_total 3.0" in text
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"):
        assert f"\n{name} " in text, name


def test_database_and_broker_checks_name_what_is_unreachable() -> None:
    port = free_port()  # nothing listens here
    problem = telemetry.database_check(f"postgresql+psycopg://valora@127.0.0.1:{port}/valora")()
    assert problem and "connection" in problem.lower()
    assert telemetry.broker_check(f"127.0.0.1:{port}")() == f"broker 127.0.0.1:{port} does not answer"


def test_metrics_address_defaults_to_loopback() -> None:
    assert Settings.from_env({}).metrics_addr == "127.0.0.1"
    assert Settings.from_env({"VALORA_METRICS_ADDR": "0.0.0.0"}).metrics_addr == "0.0.0.0"


def test_listener_binds_the_configured_address_only() -> None:
    port = free_port()
    health = Health(lambda: None, 60)
    server = serve_metrics("127.0.0.1", port, CollectorRegistry(), health)
    try:
        assert server.server_address[0] == "127.0.0.1"
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("addr", ["127.0.0.1", "no-such-host.invalid"])
def test_a_port_in_use_or_a_bad_address_is_one_clear_error(addr: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServiceError, match=f"cannot serve metrics on {addr}:{port} .*VALORA_METRICS_ADDR"):
            serve_metrics(addr, port, CollectorRegistry(), Health(lambda: None, 60))


@pytest.mark.integration
def test_the_cli_says_so_in_one_line(database_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VALORA_")} | {"VALORA_DATABASE_URL": database_url}
    run_cli(["db", "upgrade"], env)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env["VALORA_METRICS_PORT"] = str(taken.getsockname()[1])
        proc = subprocess.run([sys.executable, "-m", "valora.cli", "scheduler", "--once"], env=env,
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("valora: error: cannot serve metrics on 127.0.0.1:"), proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
