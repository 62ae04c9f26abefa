"""Which plan is in force when, and how a period's usage is split: one definition for everyone.

The worker routes an event to the usage window containing its time, the close rates each
window under its plan, and the running totals show the same windows; all three ask this
module, so they cannot disagree.

A period's usage windows tile the subscription's active part of the period. They are cut

* at every plan change inside it (each plan prices the usage recorded while it was in force),
* at `trial_end`, when the plan in force during the trial does not bill trial usage: the
  window before it is free (`usage_billed` False), the one after bills as usual. A plan that
  bills trial usage needs no cut, so its tiers keep counting across the trial's end.

Each window's usage is stored under its `key`: the period's start for the first window, the
instant that began it (a plan change or the trial's end) for every later one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rating.periods import Period
from rating.plan_change import plan_windows
from schemas.plans import Plan


@dataclass(frozen=True, slots=True)
class PlanHistory:
    """The plan a subscription started on and its changes, as (effective instant, new plan) in time order."""

    first: Plan
    changes: tuple[tuple[datetime, Plan], ...] = ()

    def plan_at(self, t: datetime) -> Plan:
        """The plan in force at t: the last change at or before t, else the first plan."""
        plan = self.first
        for at, changed in self.changes:
            if at > t:
                break
            plan = changed
        return plan


@dataclass(frozen=True, slots=True)
class UsageWindow:
    """A part `[start, end)` of a period priced under `plan`, its usage stored under `key`."""

    plan: Plan
    start: datetime
    end: datetime
    key: datetime
    usage_billed: bool = True  # False: inside a trial whose plan does not bill trial usage


def usage_windows(
    history: PlanHistory,
    period: Period,
    *,
    active_from: datetime | None = None,
    active_until: datetime | None = None,
    trial_end: datetime | None = None,
) -> tuple[UsageWindow, ...]:
    """The usage windows of `period` inside the active window `[active_from, active_until)`.

    Raises:
        ValueError: an instant is naive.
        InvalidInput: the plan changes are not in strictly increasing time order.
    """
    windows = plan_windows(period, history.first, history.changes, active_from=active_from, active_until=active_until)
    out: list[UsageWindow] = []
    for i, (plan, start, end) in enumerate(windows):
        key = period.start if i == 0 else start
        free = trial_end is not None and start < trial_end and not plan.trial_usage_billed
        if free and trial_end is not None and trial_end < end:  # the trial ends inside: cut there
            out.append(UsageWindow(plan, start, trial_end, key, usage_billed=False))
            out.append(UsageWindow(plan, trial_end, end, trial_end))
        else:
            out.append(UsageWindow(plan, start, end, key, usage_billed=not free))
    return tuple(out)


def window_at(windows: tuple[UsageWindow, ...], t: datetime) -> UsageWindow | None:
    """The window containing t, or None when t is outside them all."""
    for window in windows:
        if window.start <= t < window.end:
            return window
    return None
