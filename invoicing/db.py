"""Engines, migrations and the schema-version guard.

Every command except `valora db upgrade` calls `connect()`, which refuses to run
against a database whose schema is behind the code's migrations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from schemas.errors import ValoraError

MIGRATIONS = Path(__file__).with_name("migrations")


class DatabaseUnavailable(ValoraError):
    code = "database_unavailable"


class SchemaOutOfDate(ValoraError):
    code = "schema_out_of_date"


def normalize_url(url: str) -> str:
    """Use psycopg 3 for plain `postgresql://` URLs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def psycopg_connect_args(database_url: str) -> dict[str, Any]:
    """Connection keywords for psycopg from a `postgresql[+driver]://` URL.

    Parsing with SQLAlchemy (instead of rewriting the scheme) keeps query options
    such as `?host=/socket/dir` intact however they were quoted.
    """
    url = make_url(database_url)
    args: dict[str, Any] = {k: v if isinstance(v, str) else v[-1] for k, v in url.query.items()}
    for key, value in (
        ("host", url.host),
        ("port", url.port),
        ("user", url.username),
        ("password", url.password),
        ("dbname", url.database),
    ):
        if value not in (None, ""):
            args[key] = value
    return args


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    return create_engine(
        normalize_url(url),
        pool_size=pool_size,
        pool_pre_ping=True,
        connect_args={"connect_timeout": 5},
    )


def _alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str | None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except OperationalError as exc:
        raise DatabaseUnavailable(f"cannot reach the database: {_first_line(exc)}") from exc


def upgrade(engine: Engine) -> tuple[str | None, str | None]:
    """Apply pending migrations; returns (revision before, revision after)."""
    before = current_revision(engine)
    cfg = _alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return before, head_revision()


def connect(url: str, *, pool_size: int = 5) -> Engine:
    """An engine for a database whose schema is at the code's head revision.

    Raises:
        DatabaseUnavailable: the server does not answer.
        SchemaOutOfDate: migrations are pending; run `valora db upgrade`.
    """
    engine = make_engine(url, pool_size=pool_size)
    current, head = current_revision(engine), head_revision()
    if current != head:
        engine.dispose()
        raise SchemaOutOfDate(
            f"database schema is at {current or 'nothing'}, code needs {head}: run `valora db upgrade`"
        )
    return engine


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def recreate_database(server_url: str, name: str) -> str:
    """Drop and create database `name` on the server of `server_url`, migrate it, return its URL.

    For the demo and benchmarks, which must start from nothing on every run.
    """
    import psycopg

    url = make_url(normalize_url(server_url))
    admin = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    db_url = url.set(database=name).render_as_string(hide_password=False)
    engine = make_engine(db_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return db_url
