"""How the CLI fails: one line on stderr and a non-zero exit status, never a traceback.

Every error Valora raises on purpose is a `ValoraError` with a stable `code`
(schemas/errors.py) and a one-line message naming what is wrong, and its exit status comes
from the one error table (`valora.problems`, shared with the HTTP API); failures from the
libraries at the edge (a database or broker that does not answer, a file that cannot be
read or written) are turned into the same kind of line by `classify`, the one place that
knows them. Anything else is a bug: one line saying so, and the traceback only with
`VALORA_DEBUG=1`.

    exit  meaning
    1     the command failed: bad input, not found, refused, a service unavailable
    2     the command line itself is wrong (argparse's convention): unknown option, bad value
    70    internal error (a bug; VALORA_DEBUG=1 shows the traceback)
    130   interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from schemas.errors import ValoraError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the command and where help is."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
        sys.exit(EXIT_USAGE)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def classify(exc: BaseException) -> tuple[str, str] | None:
    """(code, one-line message) for an expected failure; None for a bug."""
    from confluent_kafka import KafkaException
    from psycopg import OperationalError as PsycopgOperationalError
    from sqlalchemy.exc import OperationalError

    from valora.cli_common import CliError
    from valora.service_probes import ServiceError

    if isinstance(exc, ValoraError):
        return exc.code, _first_line(exc)  # the line valora.problems.cli_line gives, without its prefix
    if isinstance(exc, (CliError, ServiceError, KafkaException)):
        return "service_unavailable", _first_line(exc)
    if isinstance(exc, (OperationalError, PsycopgOperationalError)):
        return "database_unavailable", f"database: {_first_line(exc)}"
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return "os_error", f"{where}{exc.strerror}"
    return None


def _exit_status(exc: BaseException) -> int:
    """The CLI exit of the error's entry in the one error table (valora/problems.py), else 1."""
    if not isinstance(exc, ValoraError):
        return EXIT_FAILED
    from valora.problems import kind_of

    return kind_of(exc).cli_exit


def run_guarded(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one command; every failure becomes one stderr line and an exit status."""
    debug = bool(os.environ.get("VALORA_DEBUG"))
    try:
        return func(args)
    except KeyboardInterrupt:
        sys.stderr.write("valora: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `valora invoices list ... | head`: the reader left, nothing to report
        _silence_stdout()
        return EXIT_FAILED
    except Exception as exc:
        known = classify(exc)
        if debug:
            raise
        if known is None:
            sys.stderr.write(
                f"valora: internal error: {type(exc).__name__}: {_first_line(exc)} "
                "(a bug; VALORA_DEBUG=1 shows the traceback)\n"
            )
            return EXIT_INTERNAL
        sys.stderr.write(f"valora: error: {known[1]}\n")
        return _exit_status(exc)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
