"""The metrics and health listener of the worker and the scheduler.

One small HTTP server per process, on `VALORA_METRICS_ADDR:VALORA_METRICS_PORT`:

* `/metrics`: the process's registry (its own metrics plus prometheus_client's process
  collector: `process_resident_memory_bytes`, `process_cpu_seconds_total`, ..., and the main
  loop's `valora_loop_heartbeat_age_seconds` and `valora_loop_stalled`);
* `/healthz` (liveness): 200 while the process's main loop has not died;
* `/readyz` (readiness): 200 when every dependency answers (the broker, the database) and
  the main loop has beaten within its stall limit, else 503. Both answer JSON naming each
  check, so `curl` and compose healthchecks show why.

The domain loops only record a monotonic heartbeat and a crash; what "ready" means is
decided here, at the edge, where the probes may do I/O.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector, make_wsgi_app

from valora.service_probes import ServiceError, broker_answers, postgres_problem

PROBE_TIMEOUT_S = 2.0  # each dependency check; compose's healthcheck timeout is above the sum
WORKER_STALL_AFTER_S = 60.0  # the ingest loop beats at least every fetch (0.1 s idle); 60 s is stuck

Check = Callable[[], str | None]  # None when healthy, else one line saying what is wrong


def broker_check(bootstrap: str) -> Check:
    """The broker returns cluster metadata within the probe timeout."""
    return lambda: None if broker_answers(bootstrap, PROBE_TIMEOUT_S) else f"broker {bootstrap} does not answer"


def database_check(database_url: str) -> Check:
    """`SELECT 1` succeeds on a fresh connection (the loop's own connection may be busy)."""
    return lambda: postgres_problem(database_url, PROBE_TIMEOUT_S)


@dataclass
class Health:
    """Liveness and readiness of one process from its heartbeat, its crash and its dependency checks.

    `heartbeat` returns the `time.monotonic()` of the main loop's last beat (None before it
    started); `failure` what stopped the loop for good (None while it runs).
    """

    heartbeat: Callable[[], float | None]
    stall_after_s: float
    checks: Mapping[str, Check] = field(default_factory=dict)
    failure: Callable[[], str | None] = lambda: None
    clock: Callable[[], float] = time.monotonic

    def live(self) -> tuple[bool, dict[str, Any]]:
        failure = self.failure()
        return failure is None, {"status": "ok" if failure is None else "failed", "failure": failure}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        results: dict[str, str] = {"loop": self._loop_state()}
        for name, check in self.checks.items():
            try:
                problem = check()
            except Exception as exc:  # a probe that breaks reports unready; it never kills the listener
                problem = f"{type(exc).__name__}: {exc}"
            results[name] = "ok" if problem is None else problem
        ok = all(v == "ok" for v in results.values()) and self.failure() is None
        return ok, {"status": "ready" if ok else "not_ready", "checks": results}

    def _loop_state(self) -> str:
        beat = self.heartbeat()
        if beat is None:
            return "starting"
        age = self.clock() - beat
        return "ok" if age <= self.stall_after_s else f"stuck: no progress for {age:.0f} s"


def _health_app(metrics_app: Callable[..., Iterable[bytes]], health: Health) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in ("/healthz", "/readyz"):
            return metrics_app(environ, start_response)
        ok, body = health.live() if path == "/healthz" else health.ready()
        status = "200 OK" if ok else "503 Service Unavailable"
        start_response(status, [("Content-Type", "application/json"), ("Cache-Control", "no-store")])
        return [json.dumps(body).encode()]

    return app


def _loop_gauges(registry: CollectorRegistry, health: Health) -> None:
    """The main loop's heartbeat as metrics, computed at scrape time (no I/O, unlike /readyz)."""

    def age() -> float:
        beat = health.heartbeat()
        return float("nan") if beat is None else max(0.0, health.clock() - beat)

    Gauge(
        "valora_loop_heartbeat_age_seconds", "Seconds since the main loop last stepped", registry=registry
    ).set_function(age)
    Gauge(
        "valora_loop_stalled", "1 when the main loop has not stepped within its stall limit", registry=registry
    ).set_function(lambda: float(age() > health.stall_after_s))


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes and probes every few seconds
        return None


def serve_metrics(addr: str, port: int, registry: CollectorRegistry, health: Health) -> WSGIServer:
    """Serve /metrics, /healthz and /readyz on addr:port from a daemon thread; returns the server.

    Raises:
        ServiceError: the address does not resolve or the port is taken (one line for the CLI).

    The process collector joins the registry here, so every Valora process reports its RSS,
    CPU time and open file descriptors under prometheus_client's standard names.
    """
    try:
        family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

        class Server(ThreadingMixIn, WSGIServer):
            address_family = family  # `::` or an IPv6 address as well as IPv4
            daemon_threads = True

        server = make_server(addr, port, _health_app(make_wsgi_app(registry), health), Server, handler_class=_Quiet)
    except OSError as exc:
        raise ServiceError(
            f"cannot serve metrics on {addr}:{port} ({exc.strerror or exc}); check VALORA_METRICS_ADDR "
            "and VALORA_METRICS_PORT"
        ) from None
    ProcessCollector(registry=registry)
    _loop_gauges(registry, health)
    threading.Thread(target=server.serve_forever, name="valora-metrics", daemon=True).start()
    return server


def worker_listener(addr: str, port: int, bootstrap: str, database_url: str) -> Callable[[Any, Any], WSGIServer]:
    """What `run_worker` calls with its registry and processor: the listener, ready when the
    broker and the database answer and the ingest loop turns, failed once the loop crashed."""

    def serve(registry: CollectorRegistry, processor: Any) -> WSGIServer:
        health = Health(
            heartbeat=lambda: processor.heartbeat,
            stall_after_s=WORKER_STALL_AFTER_S,
            checks={"broker": broker_check(bootstrap), "database": database_check(database_url)},
            failure=lambda: None if processor.crash is None else str(processor.crash),
        )
        return serve_metrics(addr, port, registry, health)

    return serve
