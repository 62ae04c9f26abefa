"""`valora api` as a process: listens, answers /healthz and /readyz (Postgres and broker), serves OpenAPI."""

from __future__ import annotations

import socket
import subprocess
import sys

import httpx
import pytest

from invoicing.db import make_engine, upgrade
from tests.conftest import wait_for
from tests.helpers import cli_env

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_valora_api_serves_health_readiness_and_openapi(database_url: str, broker: str, topic_prefix: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    engine.dispose()
    port = _free_port()
    env = cli_env(broker, database_url, topic_prefix)
    proc = subprocess.Popen([sys.executable, "-m", "valora.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{base}/healthz") or proc.poll() is not None, timeout_s=60, message="valora api")
        assert proc.poll() is None, "valora api exited early"
        assert httpx.get(f"{base}/readyz").json() == {"status": "ready", "database": True, "broker": True}
        assert httpx.get(f"{base}/openapi.json").json()["openapi"].startswith("3.1")
        unauthorized = httpx.get(f"{base}/v1/invoices")
        assert unauthorized.status_code == 401 and unauthorized.headers["www-authenticate"] == "Bearer"
        assert 'valora_api_requests_total{method="GET",route="/v1/invoices",status="401"} 1.0' in httpx.get(
            f"{base}/metrics").text
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully on SIGTERM (requests in flight finish), then re-raises the signal.
    assert proc.returncode in (0, -15), stderr
    assert "Traceback" not in stderr, stderr
