"""An in-memory view of the catalog the worker routes events with.

Loaded from Postgres in a handful of queries and swapped atomically when it is
refreshed, so the hot path never queries the catalog per event.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from invoicing import models as m
from rating.periods import Period, period_containing
from rating.timeline import PlanHistory, UsageWindow, usage_windows, window_at
from schemas.catalog import Aggregation
from schemas.plans import Interval, Plan, load_plan


@dataclass(frozen=True, slots=True)
class MeterView:
    key: str
    event_type: str
    aggregation: Aggregation
    value_path: tuple[str, ...]
    filters: Mapping[str, frozenset[str]]
    allow_negative: bool = False


Route = tuple[str, frozenset[str], datetime, datetime, datetime]
"""Where an event at some instant counts for one subscription:
(subscription id, meter keys of the plan in force, period start, period end, segment start)."""


@dataclass(slots=True)
class SubscriptionView:
    organization: str
    id: str
    customer: str
    start: datetime
    end: datetime | None
    anchor: datetime
    interval: Interval
    interval_count: int
    history: PlanHistory  # the plan it started on and its plan changes (usually none)
    trial_end: datetime | None = None
    _last_period: Period | None = field(default=None, repr=False)
    _last_windows: tuple[UsageWindow, ...] = field(default=(), repr=False)

    def period_at(self, t: datetime) -> Period:
        """The billing period containing t; the last answer is cached (events cluster in time)."""
        last = self._last_period
        if last is not None and last.start <= t < last.end:
            return last
        period = period_containing(self.anchor, self.interval, t, self.interval_count)
        self._last_period = period
        self._last_windows = usage_windows(
            self.history, period, active_from=self.start, active_until=self.end, trial_end=self.trial_end
        )
        return period

    def route_at(self, t: datetime) -> tuple[Route, datetime]:
        """The period and usage window an event at t counts in, the meters its plan bills, and until when.

        The windows are `rating.timeline.usage_windows`, the ones the close rates: a period is
        cut at every plan change and, when the plan does not bill trial usage, at the trial's
        end. The route holds over `[window start, window end)`.

        Raises:
            ValueError: t is outside the subscription's active window.
        """
        period = self.period_at(t)
        window = window_at(self._last_windows, t)
        if window is None:
            raise ValueError(f"subscription {self.id!r} is not active at {t.isoformat()}")
        return (self.id, _meter_keys(window.plan), period.start, period.end, window.key), window.end


Target = tuple[str, datetime, datetime, datetime]  # (subscription, period start, period end, segment start)


@dataclass(frozen=True, slots=True)
class Routing:
    """Where events of one (organization, customer, event type) count while `valid_from <= time < valid_until`.

    Every meter of the event type, each with the active subscriptions whose plan in force
    bills it and their current period and plan segment. Built by streams.batch on the first
    such event and reused until an event's time leaves the window (a period or a plan segment
    ends, a subscription starts or ends), so routing an event is one dictionary lookup.
    """

    valid_from: datetime
    valid_until: datetime
    meters: tuple[tuple[MeterView, tuple[Target, ...]], ...]


@dataclass(frozen=True, slots=True)
class CatalogSnapshot:
    organizations: frozenset[str]
    meters_by_type: Mapping[tuple[str, str], tuple[MeterView, ...]]
    subscriptions_by_customer: Mapping[tuple[str, str], tuple[SubscriptionView, ...]]
    # The largest plan-change id the snapshot knows; the sink refuses a batch planned on an older one.
    plan_version: int = 0
    # Filled by streams.batch as events arrive: (organization, customer, event type) -> Routing.
    routings: dict[tuple[str, str, str], Routing] = field(default_factory=dict, compare=False, repr=False)


def _filters(raw: Mapping[str, Any] | None) -> Mapping[str, frozenset[str]]:
    if not raw:
        return {}
    return {prop: frozenset(_filter_text(v) for v in values) for prop, values in raw.items()}


def _filter_text(value: Any) -> str:
    """Property values are compared as text, so 5, "5" and 5.0 in a filter all mean 5."""
    return value if isinstance(value, str) else str(value)


def load_snapshot(engine: Engine) -> CatalogSnapshot:
    with Session(engine) as session:
        orgs = frozenset(session.scalars(select(m.Organization.id)))
        meters: dict[tuple[str, str], list[MeterView]] = defaultdict(list)
        for meter in session.scalars(select(m.Meter).order_by(m.Meter.organization_id, m.Meter.key)):
            meters[(meter.organization_id, meter.event_type)].append(
                MeterView(
                    key=meter.key,
                    event_type=meter.event_type,
                    aggregation=Aggregation(meter.aggregation),
                    value_path=tuple(meter.value_property.split(".")) if meter.value_property else (),
                    filters=_filters(meter.filters),
                    allow_negative=meter.allow_negative,
                )
            )
        plans = {(p.organization_id, p.code): load_plan(p.spec) for p in session.scalars(select(m.Plan))}
        changes: dict[tuple[str, str], list[tuple[datetime, Plan]]] = defaultdict(list)
        plan_version = 0
        for change in session.scalars(select(m.PlanChange).order_by(m.PlanChange.effective_at)):
            plan = plans[(change.organization_id, change.to_plan)]
            changes[(change.organization_id, change.subscription_id)].append(
                (change.effective_at.astimezone(UTC), plan)
            )
            plan_version = max(plan_version, change.id)
        subs: dict[tuple[str, str], list[SubscriptionView]] = defaultdict(list)
        for sub in session.scalars(select(m.Subscription).order_by(m.Subscription.start_at, m.Subscription.id)):
            plan = plans[(sub.organization_id, sub.plan_code)]
            subs[(sub.organization_id, sub.customer_id)].append(
                SubscriptionView(
                    organization=sub.organization_id,
                    id=sub.id,
                    customer=sub.customer_id,
                    # One tzinfo object everywhere makes the hot-path comparisons cheap.
                    start=sub.start_at.astimezone(UTC),
                    end=None if sub.end_at is None else sub.end_at.astimezone(UTC),
                    anchor=sub.billing_anchor.astimezone(UTC),
                    interval=plan.interval,
                    interval_count=plan.interval_count,
                    history=PlanHistory(plan, tuple(changes.get((sub.organization_id, sub.id), ()))),
                    trial_end=None if sub.trial_end is None else sub.trial_end.astimezone(UTC),
                )
            )
    return CatalogSnapshot(
        organizations=orgs,
        meters_by_type={k: tuple(v) for k, v in meters.items()},
        subscriptions_by_customer={k: tuple(v) for k, v in subs.items()},
        plan_version=plan_version,
    )


def _meter_keys(plan: Plan) -> frozenset[str]:
    """The meters a plan bills (computed per routing, which is cached, so rarely)."""
    return frozenset(ch.meter for ch in plan.charges if ch.meter)
