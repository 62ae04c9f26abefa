"""`valora dev up/down/status` against a real Tansu broker and a real Postgres."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import psutil
import psycopg
import pytest

from invoicing.db import psycopg_connect_args
from tests.conftest import private_tmp_dir, wait_for
from valora.devservices import dev_down, dev_status, dev_up, read_state, start_broker
from valora.service_probes import ServiceError, broker_answers, postgres_answers

pytestmark = pytest.mark.integration

UNREACHABLE_DB = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"


def _pid_exists(pid: int) -> bool:
    """True while `pid` exists at all (a zombie counts: it has not been reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _pid_running(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for some other parent to reap it does not)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _assert_one_line(error: BaseException, *fragments: str) -> None:
    text = str(error)
    assert text and "\n" not in text, repr(text)
    for fragment in fragments:
        assert fragment in text, text


def _dev_up_in_child(state_dir: Path, database_url: str | None) -> None:
    """Run dev_up in a separate Python process that then exits, like the CLI does."""
    code = ("import sys; from pathlib import Path; from valora.devservices import dev_up; "
            "dev_up(Path(sys.argv[1]), database_url=sys.argv[2] or None)")
    subprocess.run([sys.executable, "-c", code, str(state_dir), database_url or ""],
                   check=True, timeout=120)


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """A state directory whose services are stopped even if the test fails halfway."""
    path = tmp_path / "state"
    yield path
    dev_down(path)


@pytest.fixture
def embedded_state_dir() -> Iterator[Path]:
    """Like `state_dir`, outside pytest's basetemp (see `private_tmp_dir`), removed after."""
    root = private_tmp_dir("valora-test-dev-")
    yield root / "state"
    dev_down(root / "state")
    shutil.rmtree(root, ignore_errors=True)


def test_dev_up_status_down_with_external_postgres(state_dir: Path, database_url: str) -> None:
    state = dev_up(state_dir, database_url=database_url)

    assert json.loads((state_dir / "state.json").read_text()) == asdict(state)
    assert read_state(state_dir) == state
    assert state.database_url == database_url and not state.postgres_embedded
    assert state.postgres_pgdata is None and state.broker_pid is not None
    assert broker_answers(state.kafka_bootstrap) and postgres_answers(state.database_url)
    assert dev_status(state_dir) == (state, {"broker": True, "postgres": True})
    assert dev_up(state_dir, database_url=database_url) == state  # idempotent: same broker pid

    lines = dev_down(state_dir)

    assert lines == [f"stopped broker {state.kafka_bootstrap} (pid {state.broker_pid})"]
    pid = state.broker_pid
    wait_for(lambda: not _pid_exists(pid), message=f"broker pid {pid} still exists")
    assert not (state_dir / "state.json").exists()
    assert dev_status(state_dir) == (None, {"broker": False, "postgres": False})
    assert not broker_answers(state.kafka_bootstrap, timeout_s=0.5)
    assert postgres_answers(database_url), "dev down must never stop an external server"
    assert dev_down(state_dir) == []


def test_dev_up_replaces_a_dead_broker_and_keeps_postgres(state_dir: Path, database_url: str) -> None:
    first = dev_up(state_dir, database_url=database_url)
    pid = first.broker_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not broker_answers(first.kafka_bootstrap, timeout_s=0.2), message="broker still answers")

    second = dev_up(state_dir, database_url=database_url)

    assert second.broker_pid != first.broker_pid and second.database_url == database_url
    assert dev_status(state_dir) == (second, {"broker": True, "postgres": True})
    wait_for(lambda: not _pid_exists(pid), message="the killed broker was not reaped")


def test_broker_outlives_the_process_that_started_it(state_dir: Path, database_url: str) -> None:
    _dev_up_in_child(state_dir, database_url)
    state, up = dev_status(state_dir)
    assert state is not None and state.broker_pid is not None
    assert up == {"broker": True, "postgres": True}

    assert dev_down(state_dir) == [f"stopped broker {state.kafka_bootstrap} (pid {state.broker_pid})"]
    pid = state.broker_pid
    wait_for(lambda: not _pid_running(pid), message=f"broker pid {pid} still running")


def test_dev_up_with_embedded_postgres(embedded_state_dir: Path) -> None:
    """The embedded server must keep running after the process that started it exits."""
    _dev_up_in_child(embedded_state_dir, None)
    state, up = dev_status(embedded_state_dir)

    assert state is not None and state.postgres_embedded
    assert up == {"broker": True, "postgres": True}
    assert state.database_url.startswith("postgresql+psycopg://")
    assert state.postgres_pgdata == str((embedded_state_dir / "pgdata").resolve())
    with psycopg.connect(**psycopg_connect_args(state.database_url)) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("valora",)
    assert dev_up(embedded_state_dir) == state

    lines = dev_down(embedded_state_dir)

    assert lines == [f"stopped broker {state.kafka_bootstrap} (pid {state.broker_pid})",
                     f"stopped embedded postgres ({state.postgres_pgdata})"]
    assert not postgres_answers(state.database_url)
    assert not (Path(state.postgres_pgdata) / "postmaster.pid").exists()


def test_unreachable_database_is_a_one_line_error_before_anything_starts(state_dir: Path) -> None:
    with pytest.raises(ServiceError) as caught:
        dev_up(state_dir, database_url=UNREACHABLE_DB)

    _assert_one_line(caught.value, "127.0.0.1:1", "does not answer")
    assert read_state(state_dir) is None
    assert not (state_dir / "broker.log").exists(), "no broker should start for a dead database"


def test_failed_embedded_postgres_stops_the_broker_it_started(state_dir: Path) -> None:
    state_dir.mkdir()
    (state_dir / "pgdata").write_text("a file where the data directory should be")

    with pytest.raises(ServiceError) as caught:
        dev_up(state_dir)

    _assert_one_line(caught.value, "embedded postgres", "pgdata")
    assert read_state(state_dir) is None
    ports = re.findall(r"listening on: tcp://(127\.0\.0\.1:\d+)", (state_dir / "broker.log").read_text())
    assert ports, "the broker starts before postgres"
    assert not broker_answers(ports[-1], timeout_s=0.5), "the broker started by dev_up was left running"


def test_taken_port_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServiceError) as caught:
            start_broker(tmp_path / "broker.log", port=port, detached=False)
    _assert_one_line(caught.value, f"127.0.0.1:{port}", "in use")


def test_probes_answer_false_quickly_for_nothing_there() -> None:
    assert not broker_answers("127.0.0.1:1", timeout_s=0.5)
    assert not postgres_answers(UNREACHABLE_DB)
    assert not postgres_answers("not a url")


def test_probes_accept_both_url_forms(pg_admin_url: str) -> None:
    plain = re.sub(r"^postgresql\+\w+://", "postgresql://", pg_admin_url)
    assert postgres_answers(plain) and postgres_answers(plain.replace("postgresql://", "postgresql+psycopg://"))


def test_unreadable_state_is_a_one_line_error_and_dev_down_clears_it(state_dir: Path) -> None:
    state_dir.mkdir()
    (state_dir / "state.json").write_text("{not json")

    with pytest.raises(ServiceError) as caught:
        read_state(state_dir)

    _assert_one_line(caught.value, "state.json", "valora dev down")
    assert dev_down(state_dir) == []
    assert read_state(state_dir) is None
