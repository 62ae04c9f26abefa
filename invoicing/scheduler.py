"""`valora scheduler`: the period close and the subscription lifecycle jobs, run continuously and safely in parallel.

Every tick the scheduler runs its jobs in order: `close`, `issue_drafts`, `trials`, `overdue`. The `close`
job claims due periods in batches (`close_batch`: `FOR UPDATE SKIP LOCKED` inside one
transaction per batch), so any number of schedulers can run at once: each batch is
invoiced by exactly one of them, and a scheduler that dies mid-batch leaves nothing
behind (its transaction rolls back and the rows are claimable again). A batch has a
statement timeout; the close job has a time budget, after which the rest waits for the
next tick. A period whose rating fails is deferred with exponential backoff and a
`close_failures` record, so one poison item never blocks the others.

`issue_drafts` issues the drafts the close wrote for organizations with a draft grace
period once their `issue_after` has passed (`invoicing.commands.issue_due_drafts`), with
gapless numbers in the order organization, period start, subscription.
`trials` ends trials whose `trial_end` has passed (`invoicing.subscription_jobs.end_trials`);
`overdue` moves active subscriptions with an overdue invoice to past_due and past-due ones
whose overdue invoices are all settled back to active (`mark_overdue`, `reactivate_paid`).
Both claim rows with `SKIP LOCKED` in batches of `batch_size`, so they are parallel-safe
too, as is `issue_drafts`. Every job reports the same metrics under its own `job` label
(`batch_processed` counts what it did: periods closed, subscriptions moved, drafts issued).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from invoicing.close import CloseSummary, close_batch
from invoicing.close_safety import outstanding_failures
from invoicing.commands import issue_due_drafts
from invoicing.metrics import SchedulerMetrics
from invoicing.subscription_jobs import end_trials, mark_overdue, reactivate_paid
from schemas.plans import Plan

log = logging.getLogger("valora.scheduler")


class _LifecycleStep(Protocol):
    def __call__(self, engine: Engine, *, now: datetime, limit: int, statement_timeout_ms: int | None) -> int: ...


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
        self.heartbeat: float | None = None  # monotonic time of the run loop's last step (readiness)

    @property
    def stall_after_s(self) -> float:
        """How long without a heartbeat means stuck: a tick's wait plus two statements at their timeout.

        The loop beats when each job starts and after each close batch, so a healthy gap is at
        most one tick's wait or one batch, whose statements the statement timeout bounds.
        """
        return self.cfg.tick_s + 2 * self.cfg.statement_timeout_ms / 1000 + 30.0

    def run_close_job(self) -> CloseSummary:
        """Close due periods batch by batch until none is claimable or the budget is spent."""
        job, total = "close", CloseSummary()

        def body(started: float) -> str:
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
                self.heartbeat = time.monotonic()
                self.metrics.batch_processed.labels(job).inc(batch.invoices + batch.ended)
                for error in batch.errors:
                    self.metrics.batch_deferred.labels(job, "rating_failed").inc()
                    log.warning("deferred: %s", error)
                if batch.batches == 0 or batch.invoices + batch.ended == 0:
                    break
            self.metrics.close_failing.set(len(outstanding_failures(self.engine)))
            return f"{total.invoices} invoice(s), {total.failed} deferred"

        self._run_job(job, body)
        return total

    def run_issue_drafts_job(self) -> int:
        """Issue every draft whose grace period is over; returns how many were issued."""
        return self._run_lifecycle_job("issue_drafts", [issue_due_drafts])

    def run_trials_job(self) -> int:
        """Convert (or end) every trial whose `trial_end` has passed; returns how many moved."""
        return self._run_lifecycle_job("trials", [end_trials])

    def run_overdue_job(self) -> int:
        """Dunning: active subscriptions with an overdue invoice → past_due, and back once paid.

        Both directions run every tick, so a payment recorded with `invoices mark-paid`
        reactivates its subscription at the next tick. Returns how many moved.
        """
        return self._run_lifecycle_job("overdue", [mark_overdue, reactivate_paid])

    def _run_lifecycle_job(self, job: str, steps: list[_LifecycleStep]) -> int:
        moved = 0

        def body(started: float) -> str:
            nonlocal moved
            for step in steps:
                count = step(
                    self.engine,
                    now=self.clock(),
                    limit=self.cfg.batch_size,
                    statement_timeout_ms=self.cfg.statement_timeout_ms,
                )
                self.metrics.batch_processed.labels(job).inc(count)
                moved += count
            return f"{moved} moved"

        self._run_job(job, body)
        return moved

    def _run_job(self, job: str, body: Callable[[float], str]) -> None:
        """Run one job with its metrics (`job` label) and a log line; a failure is counted and logged, never raised."""
        self.metrics.job_runs.labels(job).inc()
        started = self.heartbeat = time.monotonic()
        try:
            outcome = body(started)
            log.info("%s job: %s in %.2f s", job, outcome, time.monotonic() - started)
        except DBAPIError as exc:
            reason = _error_reason(exc)
            if reason == "statement_timeout":
                self.metrics.job_timeouts.labels(job, "database").inc()
            self.metrics.job_errors.labels(job, reason).inc()
            log.warning("%s job failed (%s): %s", job, reason, str(exc).splitlines()[0])
        except Exception as exc:
            self.metrics.job_errors.labels(job, _error_reason(exc)).inc()
            log.exception("%s job failed", job)
        finally:
            self.metrics.job_duration.labels(job).observe(time.monotonic() - started)

    def run(self, *, once: bool = False) -> CloseSummary:
        """Tick until stopped (or once); returns what was closed in all."""
        total = CloseSummary()
        next_tick = time.monotonic()
        while not self.stop_event.is_set():
            self.heartbeat = time.monotonic()
            self.metrics.runloop_lag.set(max(0.0, self.heartbeat - next_tick))
            total.add(self.run_close_job())
            self.run_issue_drafts_job()
            self.run_trials_job()
            self.run_overdue_job()
            if once:
                break
            next_tick += self.cfg.tick_s
            self.stop_event.wait(max(0.0, next_tick - time.monotonic()))
        return total
