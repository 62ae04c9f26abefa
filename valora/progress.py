"""A one-line progress display for long CLI work, shown only on a terminal.

It rewrites a single stderr line (carriage return) at most ten times a second and
erases it when done, so a pipe or a log file never sees it; the command's own output
(counts, summaries) is printed as usual afterwards.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_INTERVAL_S = 0.1
_BAR_WIDTH = 24


class Progress:
    """`update(done, detail)` redraws `label [#####.....]  42%  detail` when `total` is known."""

    def __init__(self, label: str, total: int | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.label, self.total = label, total
        self._shown_at = 0.0
        self._width = 0

    def update(self, done: int, detail: str = "", *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._shown_at < _INTERVAL_S:
            return
        self._shown_at = now
        if self.total:
            ratio = min(1.0, done / self.total)
            filled = int(ratio * _BAR_WIDTH)
            text = f"{self.label} [{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {ratio:4.0%}  {detail}"
        else:
            text = f"{self.label}  {detail}"
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def close(self) -> None:
        """Erase the line, leaving the terminal as it was."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
