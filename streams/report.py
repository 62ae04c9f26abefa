"""What a running worker tells its operator: a start line, progress while busy, a summary on stop.

Lines go to the `valora.worker` logger (the CLI prints them on stderr with a timestamp).
A progress line is logged every `interval_s` while records flow and not at all while the
worker waits, so an idle worker's log stays quiet. `live`, when given (the CLI passes one
for `--until-idle` on a terminal), receives the same line every tick to redraw in place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from streams.metrics import WorkerMetrics
from streams.processor import WorkerConfig

log = logging.getLogger("valora.worker")

PROGRESS_INTERVAL_S = 5.0


def _redacted(database_url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(database_url).render_as_string(hide_password=True)
    except Exception:  # only a label in a log line; the URL was validated before
        return "<database>"


class WorkerReport:
    """Reads the worker's counters; `tick()` is called about once a second by a timer."""

    def __init__(
        self,
        cfg: WorkerConfig,
        metrics: WorkerMetrics,
        *,
        interval_s: float = PROGRESS_INTERVAL_S,
        live: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg, self.metrics, self.interval_s, self.live, self.clock = cfg, metrics, interval_s, live, clock
        self.started_at = clock()
        self._logged = self._ticked = (self.started_at, 0)  # (when, records received by then)

    def started(self) -> None:
        mode = "until idle" if self.cfg.until_idle else f"group {self.cfg.group}"
        log.info(
            "worker started: topic %s (%s), database %s, batches of up to %d",
            self.cfg.events_topic,
            mode,
            _redacted(self.cfg.database_url),
            self.cfg.batch_max,
        )

    def lag(self) -> int:
        """Records behind the high watermarks, over every partition (from the last fetches)."""
        return int(sum(sample.value for metric in self.metrics.lag.collect() for sample in metric.samples))

    def line(self, rate: float) -> str:
        c = self.metrics.summary
        return (
            f"{c['received']:,} records ({rate:,.0f}/s): accepted {c['accepted']:,}, duplicates {c['duplicates']:,}, "
            f"dead-lettered {c['dead_lettered']:,}, lag {self.lag():,}"
        )

    def tick(self) -> None:
        """Redraw the live line, or log a progress line if records arrived and `interval_s` has passed."""
        now, received = self.clock(), self.metrics.summary["received"]
        since = self._ticked if self.live is not None else self._logged
        elapsed = now - since[0]
        rate = (received - since[1]) / elapsed if elapsed > 0 else 0.0
        if self.live is not None:
            self.live(self.line(rate))
            self._ticked = (now, received)
        elif elapsed >= self.interval_s and received != since[1]:
            log.info("worker: %s", self.line(rate))
            self._logged = (now, received)

    def stopped(self, reason: str) -> str:
        """The summary line (also logged): what this run did, in how long, and why it stopped."""
        seconds = self.clock() - self.started_at
        c = self.metrics.summary
        rate = c["received"] / seconds if seconds > 0 else 0.0
        text = (
            f"worker stopped ({reason}) after {seconds:,.1f} s: {c['received']:,} records ({rate:,.0f}/s), "
            f"accepted {c['accepted']:,}, duplicates {c['duplicates']:,}, dead-lettered {c['dead_lettered']:,}, "
            f"late {c['late']:,}, batches {c['batches']:,}"
        )
        log.info("%s", text)
        return text
