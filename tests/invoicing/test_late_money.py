"""Lateness never changes the money (pure: no database).

Random events of every aggregation, routed to their usage windows the way the worker routes
them (`rating.timeline`), folded in random batches (`rating.aggregation`), and split at random
into on-time and late (in one or two rounds): the on-time invoice plus the adjustment lines
equal the invoice of all events on time, to the minor unit, charge by charge. With a trial
ending at a random instant and a plan change at a random instant.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from random import Random
from typing import Any, NamedTuple

from hypothesis import given, settings
from hypothesis import strategies as st

from invoicing.period_rating import PlanHistory, SubscriptionTerms, late_lines, period_lines, segments
from rating import LineKind, Period
from rating.aggregation import EMPTY, Total, billable, fold, unique_observation
from rating.timeline import window_at
from schemas.catalog import Aggregation
from schemas.plans import Plan, load_plan

JAN = Period(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
SECONDS = int((JAN.end - JAN.start).total_seconds())
METERS = {
    "calls": Aggregation.COUNT,
    "gb": Aggregation.SUM,
    "peak": Aggregation.MAX,
    "seats": Aggregation.LATEST,
    "users": Aggregation.UNIQUE_COUNT,
}


class Event(NamedTuple):
    meter: str
    value: Decimal
    time: datetime
    event_id: str
    user: str


@st.composite
def charges(draw: st.DrawFn, meter: str) -> dict[str, Any]:
    price = str(draw(st.decimals(min_value=0, max_value=50, places=3)))
    charge: dict[str, Any] = {"key": meter, "meter": meter}
    model = draw(st.sampled_from(["per_unit", "graduated", "volume", "package"]))
    if model == "per_unit":
        charge |= {"model": model, "unit_amount": price, "free_units": str(draw(st.integers(0, 3)))}
    elif model == "package":
        charge |= {"model": model, "package_size": str(draw(st.integers(1, 5))), "package_amount": price}
    else:
        bound = str(draw(st.integers(1, 20)))
        tiers = [{"up_to": bound, "unit_amount": price, "flat_amount": "1"}, {"up_to": None, "unit_amount": "0.35"}]
        charge |= {"model": model, "tiers": tiers}
    if draw(st.booleans()):
        charge["minimum_amount"] = str(draw(st.decimals(min_value=0, max_value=200, places=2)))
    return charge


@st.composite
def plans(draw: st.DrawFn, code: str, currency: str) -> Plan:
    metered = [draw(charges(meter)) for meter in METERS if draw(st.integers(0, 4))]
    return load_plan(
        {
            "code": code,
            "currency": currency,
            "charges": [{"key": "base", "model": "flat", "amount": "30"}, *metered],
            "trial_usage_billed": draw(st.booleans()),
        }
    )


@st.composite
def events(draw: st.DrawFn) -> list[Event]:
    out = []
    for i in range(draw(st.integers(0, 40))):
        meter = draw(st.sampled_from(sorted(METERS)))
        value = Decimal(1) if meter == "calls" else draw(st.decimals(min_value=0, max_value=10**6, places=4))
        at = JAN.start + timedelta(seconds=draw(st.integers(0, SECONDS - 1)))
        out.append(Event(meter, value, at, f"e{i:03}", draw(st.sampled_from("abcdefgh"))))
    return out


def _instant(draw: st.DrawFn) -> datetime:
    return JAN.start + timedelta(seconds=draw(st.integers(1, SECONDS - 1)))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[SubscriptionTerms, PlanHistory, list[Event], list[int]]:
    currency = draw(st.sampled_from(["USD", "JPY", "BHD"]))
    first = draw(plans("first", currency))
    changes = ((_instant(draw), draw(plans("second", currency))),) if draw(st.booleans()) else ()
    trial_end = _instant(draw) if draw(st.booleans()) else None
    terms = SubscriptionTerms(JAN.start, None, trial_end, JAN.start)
    evs = draw(events())
    rounds = draw(st.lists(st.integers(0, 2), min_size=len(evs), max_size=len(evs)))  # 0 on time, 1 or 2 late
    return terms, PlanHistory(first, changes), evs, rounds


Usage = dict[datetime, dict[str, Decimal]]


class Store:
    """What the worker keeps: a total per (window key, meter) and the distinct values seen."""

    def __init__(self, terms: SubscriptionTerms, history: PlanHistory) -> None:
        self.windows = tuple(segments(terms, history, JAN))
        self.totals: dict[tuple[datetime, str], Total] = defaultdict(lambda: EMPTY)
        self.seen: dict[tuple[datetime, str], set[str]] = defaultdict(set)

    def add(self, batch: list[Event]) -> None:
        """Route and fold one batch, the way streams.batch and streams.sink do."""
        groups: dict[tuple[datetime, str], list[Event]] = defaultdict(list)
        for e in batch:
            window = window_at(self.windows, e.time)
            assert window is not None
            if e.meter not in {c.meter for c in window.plan.charges}:
                continue  # the plan in force does not bill this meter: not routed
            key = (window.key, e.meter)
            if METERS[e.meter] is Aggregation.UNIQUE_COUNT:
                e = e._replace(value=unique_observation(e.user, self.seen[key]))
            groups[key].append(e)
        for key, group in groups.items():
            self.totals[key] = fold(METERS[key[1]], group, self.totals[key])

    def usage(self) -> Usage:
        out: Usage = defaultdict(dict)
        for (segment, meter), total in self.totals.items():
            out[segment][meter] = billable(total)
        return out


def _batches(evs: list[Event], rnd: Random) -> list[list[Event]]:
    shuffled = list(evs)
    rnd.shuffle(shuffled)
    cuts = sorted(rnd.randint(0, len(shuffled)) for _ in range(3))
    return [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]


def _by_charge(lines: list[Any]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for line in lines:
        out[line.charge] += line.amount_minor
    return dict(out)


@settings(max_examples=300, deadline=None)
@given(scenarios(), st.randoms())
def test_on_time_invoice_plus_adjustments_equals_all_on_time(
    scenario: tuple[SubscriptionTerms, PlanHistory, list[Event], list[int]], rnd: Random
) -> None:
    terms, history, evs, rounds = scenario
    everything = Store(terms, history)
    for batch in _batches(evs, rnd):
        everything.add(batch)
    all_on_time = period_lines(terms, history, JAN, everything.usage()).lines

    store = Store(terms, history)
    for batch in _batches([e for e, r in zip(evs, rounds, strict=True) if r == 0], rnd):
        store.add(batch)
    billed = store.usage()
    lines = list(period_lines(terms, history, JAN, billed).lines)
    for late_round in (1, 2):  # each round is billed on a later invoice
        store.add([e for e, r in zip(evs, rounds, strict=True) if r == late_round])
        with_late = store.usage()
        adjustments = late_lines(terms, history, JAN, billed, with_late)
        assert all(line.kind is LineKind.ADJUSTMENT for line in adjustments)
        lines += adjustments
        billed = with_late

    assert sum(line.amount_minor for line in lines) == sum(line.amount_minor for line in all_on_time)
    expected = {k: v for k, v in _by_charge(all_on_time).items()}
    got = _by_charge(lines)
    assert {k: got.get(k, 0) for k in expected} == expected
    assert set(got) <= set(expected)
