"""How the CLI fails: one line on stderr and an exit status from one table, never a traceback.

Every error Valora raises on purpose carries a stable `code` (schemas/errors.py); the
table below maps codes to exit statuses, walking up the class tree so a new subclass
(say `InvalidCatalog` under `InvalidInput`) exits like its parent until it is listed.
Failures from the libraries at the edge (a database or broker that does not answer, a
file that cannot be written) get the same treatment. Anything else is a bug: one line
saying so, and the traceback only with `VALORA_DEBUG=1`.

    exit  meaning
    1     refused or failed (an illegal state move, a crashed worker, ...)
    2     bad input: an argument, a file, a VALORA_* setting (argparse uses 2 as well)
    3     not found: an organization, invoice, subscription, credit note, plan
    69    a service is unavailable: Postgres, the broker, the schema needs an upgrade
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
EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 69
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

EXIT_BY_CODE: dict[str, int] = {
    "valora_error": EXIT_FAILED,
    "invalid_input": EXIT_USAGE,
    "invoice_not_found": EXIT_NOT_FOUND,
    "invoice_line_not_found": EXIT_NOT_FOUND,
    "credit_note_not_found": EXIT_NOT_FOUND,
    "subscription_not_found": EXIT_NOT_FOUND,
    "organization_not_found": EXIT_NOT_FOUND,
    "plan_not_found": EXIT_NOT_FOUND,
    "database_unavailable": EXIT_UNAVAILABLE,
    "schema_out_of_date": EXIT_UNAVAILABLE,
    "service_unavailable": EXIT_UNAVAILABLE,
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the command and where help is."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
        sys.exit(EXIT_USAGE)


def exit_status(exc: BaseException) -> int:
    """The exit status for an error Valora raised on purpose, from `EXIT_BY_CODE`."""
    for cls in type(exc).__mro__:
        code = getattr(cls, "code", None)
        if isinstance(code, str) and code in EXIT_BY_CODE and cls.__dict__.get("code") == code:
            return EXIT_BY_CODE[code]
    return EXIT_FAILED


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def classify(exc: BaseException) -> tuple[str, str, int] | None:
    """(code, one-line message, exit status) for an expected failure; None for a bug."""
    from confluent_kafka import KafkaException
    from psycopg import OperationalError as PsycopgOperationalError
    from sqlalchemy.exc import OperationalError

    from valora.cli_common import CliError
    from valora.service_probes import ServiceError

    if isinstance(exc, ValoraError):
        return exc.code, _first_line(exc), exit_status(exc)
    if isinstance(exc, (CliError, ServiceError, KafkaException)):
        return "service_unavailable", _first_line(exc), EXIT_UNAVAILABLE
    if isinstance(exc, (OperationalError, PsycopgOperationalError)):
        return "database_unavailable", f"database: {_first_line(exc)}", EXIT_UNAVAILABLE
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return "os_error", f"{where}{exc.strerror}", EXIT_FAILED
    return None


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
        code, line, status = known
        sys.stderr.write(f"valora: error: {line} [{code}]\n")
        return status


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
