"""Where long-running commands' log lines go: stderr, one timestamped line each.

`valora worker` and `valora scheduler` log through the `valora.*` loggers (start, progress,
each job run, the summary on stop). Library logs (Faust, aiokafka) stay at
`VALORA_LOG_LEVEL`; Valora's own lines are INFO so they show by default.
"""

from __future__ import annotations

import logging
import sys
import time

from valora.progress import Progress


class _ConsoleHandler(logging.Handler):
    """Writes `2026-12-01T22:59:08Z message` to stderr, first erasing a live progress line."""

    def __init__(self, progress: Progress | None) -> None:
        super().__init__()
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.progress is not None:
                self.progress.close()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
            sys.stderr.write(f"{stamp} {record.getMessage()}\n")
            sys.stderr.flush()
        except Exception:  # logging must never take the process down
            self.handleError(record)


def console_logging(level: str = "info", progress: Progress | None = None) -> None:
    """Send the `valora` loggers' lines to stderr (INFO, or DEBUG when `level` is debug)."""
    logger = logging.getLogger("valora")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.addHandler(_ConsoleHandler(progress))
    logger.setLevel(logging.DEBUG if level == "debug" else logging.INFO)
    logger.propagate = False
