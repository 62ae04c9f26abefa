"""The plan in force at t and a period's usage windows (plan changes and the trial's end)."""

from __future__ import annotations

from rating import Period
from rating.timeline import PlanHistory, UsageWindow, usage_windows, window_at
from tests.rating.builders import plan, utc

JAN = Period(utc(2026, 1, 1), utc(2026, 2, 1))
FREE = plan({"key": "api", "model": "per_unit", "meter": "calls", "unit_amount": "1"}, code="free_trial")
FREE = FREE.model_copy(update={"trial_usage_billed": False})
BILLED = plan({"key": "api", "model": "per_unit", "meter": "calls", "unit_amount": "2"}, code="billed_trial")


def test_plan_in_force_is_the_last_change_at_or_before_t() -> None:
    history = PlanHistory(FREE, ((utc(2026, 1, 10), BILLED),))
    assert history.plan_at(utc(2026, 1, 9, 23, 59, 59)) is FREE
    assert history.plan_at(utc(2026, 1, 10)) is BILLED
    assert history.plan_at(utc(2026, 3, 1)) is BILLED


def test_a_free_trial_ending_inside_the_period_cuts_it() -> None:
    trial_end = utc(2026, 1, 15, 12)
    windows = usage_windows(PlanHistory(FREE), JAN, trial_end=trial_end)
    assert windows == (
        UsageWindow(FREE, JAN.start, trial_end, JAN.start, usage_billed=False),
        UsageWindow(FREE, trial_end, JAN.end, trial_end),
    )
    assert window_at(windows, trial_end) == windows[1]
    assert window_at(windows, utc(2026, 1, 15, 11, 59, 59)) == windows[0]
    assert window_at(windows, JAN.end) is None


def test_a_plan_that_bills_trial_usage_keeps_the_period_whole() -> None:
    windows = usage_windows(PlanHistory(BILLED), JAN, trial_end=utc(2026, 1, 15))
    assert windows == (UsageWindow(BILLED, JAN.start, JAN.end, JAN.start),)


def test_trial_covering_the_period_makes_it_free_and_plan_changes_cut_too() -> None:
    assert usage_windows(PlanHistory(FREE), JAN, trial_end=utc(2026, 3, 1)) == (
        UsageWindow(FREE, JAN.start, JAN.end, JAN.start, usage_billed=False),
    )
    # Free trial plan until Jan 10, then a plan that bills trial usage: no cut at the trial's end.
    change = utc(2026, 1, 10)
    windows = usage_windows(PlanHistory(FREE, ((change, BILLED),)), JAN, trial_end=utc(2026, 1, 20))
    assert windows == (
        UsageWindow(FREE, JAN.start, change, JAN.start, usage_billed=False),
        UsageWindow(BILLED, change, JAN.end, change),
    )
    # Started mid-period with a change at its very start: one window, stored under the period's start.
    start = utc(2026, 1, 5)
    assert usage_windows(PlanHistory(FREE, ((start, BILLED),)), JAN, active_from=start) == (
        UsageWindow(BILLED, start, JAN.end, JAN.start),
    )
