"""`valora scheduler`: the period close, run continuously and safely in parallel.

Every tick the scheduler runs its jobs. The `close` job claims due periods in batches
(`close_batch`: `FOR UPDATE SKIP LOCKED` inside one transaction per batch), so any number
of schedulers can run at once: each batch is invoiced by exactly one of them, and a
scheduler that dies mid-batch leaves nothing behind (its transaction rolls back and
the rows are claimable again). A batch has a statement timeout; a job run has a time
budget, after which the rest waits for the next tick. A period whose rating fails is
deferred with exponential backoff and a `close_failures` record, so one poison item
never blocks the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from invoicing.close import CloseSummary, close_batch
from invoicing.metrics import SchedulerMetrics
from schemas.plans import Plan

log = logging.getLogger("valora.scheduler")


@dataclass(frozen=True)
class SchedulerConfig:
    tick_s: float = 10.0
    batch_size: int = 500
    job_budget_s: float = 50.0
    statement_timeout_ms: int = 30_000
    late_grace: timedelta = timedelta(hours=1)


def _error_reason(exc: BaseException) -> str:
    code = getattr(getattr(exc, "orig", None), "sqlstate", None)
    if code == "57014":
        return "statement_timeout"
    if isinstance(exc, OperationalError):
        return "database_unavailable"
    return getattr(exc, "code", None) or type(exc).__name__


class Scheduler:
    def __init__(
        self, engine: Engine, cfg: SchedulerConfig, metrics: SchedulerMetrics, clock: Callable[[], datetime]
    ) -> None:
        self.engine, self.cfg, self.metrics, self.clock = engine, cfg, metrics, clock
        self.stop_event = threading.Event()
        self.plans: dict[tuple[str, str], Plan] = {}

    def run_close_job(self) -> CloseSummary:
        """Close due periods batch by batch until none is claimable or the budget is spent."""
        job, total = "close", CloseSummary()
        self.metrics.job_runs.labels(job).inc()
        started = time.monotonic()
        try:
            while not self.stop_event.is_set():
                if time.monotonic() - started > self.cfg.job_budget_s:
                    self.metrics.job_timeouts.labels(job, "budget").inc()
                    break
                now = self.clock()
                batch = close_batch(
                    self.engine,
                    cutoff=now - self.cfg.late_grace,
                    issued_at=now,
                    now=now,
                    limit=self.cfg.batch_size,
                    statement_timeout_ms=self.cfg.statement_timeout_ms,
                    plans=self.plans,
                )
                total.add(batch)
                self.metrics.batch_processed.labels(job).inc(batch.invoices + batch.ended)
                for error in batch.errors:
                    self.metrics.batch_deferred.labels(job, "rating_failed").inc()
                    log.warning("deferred: %s", error)
                if batch.batches == 0 or batch.invoices + batch.ended == 0:
                    break
        except DBAPIError as exc:
            reason = _error_reason(exc)
            if reason == "statement_timeout":
                self.metrics.job_timeouts.labels(job, "database").inc()
            self.metrics.job_errors.labels(job, reason).inc()
            log.warning("close job failed (%s): %s", reason, str(exc).splitlines()[0])
        except Exception as exc:
            self.metrics.job_errors.labels(job, _error_reason(exc)).inc()
            log.exception("close job failed")
        finally:
            self.metrics.job_duration.labels(job).observe(time.monotonic() - started)
        return total

    def run(self, *, once: bool = False) -> CloseSummary:
        """Tick until stopped (or once); returns what was closed in all."""
        total = CloseSummary()
        next_tick = time.monotonic()
        while not self.stop_event.is_set():
            self.metrics.runloop_lag.set(max(0.0, time.monotonic() - next_tick))
            total.add(self.run_close_job())
            if once:
                break
            next_tick += self.cfg.tick_s
            self.stop_event.wait(max(0.0, next_tick - time.monotonic()))
        return total
