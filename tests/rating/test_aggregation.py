"""The aggregations as folds: batching, order and lateness never change a quantity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal, Inexact
from fractions import Fraction
from random import Random
from typing import NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rating.aggregation import (
    EMPTY,
    MERGE_RULE,
    MergeRule,
    Total,
    billable,
    fold,
    late_delta,
    merge,
    unique_observation,
)
from schemas.catalog import Aggregation

D = Decimal
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Ev(NamedTuple):
    value: Decimal
    time: datetime
    event_id: str


values = st.decimals(min_value=-(10**30), max_value=10**30, places=6, allow_nan=False, allow_infinity=False)


@st.composite
def events(draw: st.DrawFn, aggregation: Aggregation) -> list[Ev]:
    """Distinct events; count gives each 1 and unique_count each 1 or 0 by set membership."""
    n = draw(st.integers(min_value=0, max_value=25))
    seconds = draw(st.lists(st.integers(min_value=0, max_value=50), min_size=n, max_size=n))
    raw = draw(st.lists(values, min_size=n, max_size=n))
    users = draw(st.lists(st.sampled_from("abcdef"), min_size=n, max_size=n))
    seen: set[str] = set()
    out = []
    for i, (s, v, u) in enumerate(zip(seconds, raw, users, strict=True)):
        if aggregation is Aggregation.COUNT:
            v = D(1)
        elif aggregation is Aggregation.UNIQUE_COUNT:
            v = unique_observation(u, seen)
        out.append(Ev(v, T0 + timedelta(seconds=s), f"e{i:03}"))
    return out


def _reference(aggregation: Aggregation, evs: list[Ev]) -> Fraction:
    """The quantity straight from the definition in docs/pricing.md, as an exact fraction."""
    if not evs:
        return Fraction(0)
    if aggregation is Aggregation.MAX:
        return Fraction(max(e.value for e in evs))
    if aggregation is Aggregation.LATEST:
        return Fraction(max(evs, key=lambda e: (e.time, e.event_id)).value)
    return sum((Fraction(e.value) for e in evs), Fraction(0))


@st.composite
def split_runs(draw: st.DrawFn) -> tuple[Aggregation, list[Ev], list[int]]:
    aggregation = draw(st.sampled_from(list(Aggregation)))
    evs = draw(events(aggregation))
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=len(evs)), max_size=4)))
    return aggregation, evs, cuts


@given(split_runs(), st.randoms())
def test_any_batching_and_order_gives_the_definition(run: tuple[Aggregation, list[Ev], list[int]], rnd: Random) -> None:
    aggregation, evs, cuts = run
    shuffled = list(evs)
    rnd.shuffle(shuffled)
    batches = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]
    totals = [fold(aggregation, batch) for batch in batches]
    rnd.shuffle(totals)
    merged = EMPTY
    for total in totals:
        merged = merge(aggregation, merged, total)
    whole = fold(aggregation, evs)
    assert billable(merged) == billable(whole) == _reference(aggregation, evs)
    assert merged.events == len(evs)
    assert merged.latest_time == (max(e.time for e in evs) if evs else None)


@given(split_runs())
def test_late_delta_is_billed_all_minus_billed_on_time(run: tuple[Aggregation, list[Ev], list[int]]) -> None:
    aggregation, evs, cuts = run
    cut = cuts[0] if cuts else len(evs)
    on_time, late = evs[:cut], evs[cut:]
    after, delta = late_delta(aggregation, fold(aggregation, on_time), late)
    assert billable(after) == _reference(aggregation, evs)
    assert delta == _reference(aggregation, evs) - _reference(aggregation, on_time)


def test_late_values_that_do_not_move_the_quantity_add_nothing() -> None:
    on_time = [Ev(D(40), T0 + timedelta(days=5), "a"), Ev(D(7), T0 + timedelta(days=20), "b")]
    older = [Ev(D(200), T0 + timedelta(days=1), "z")]
    below = [Ev(D(39), T0 + timedelta(days=30), "c")]
    assert late_delta(Aggregation.MAX, fold(Aggregation.MAX, on_time), below)[1] == 0
    assert late_delta(Aggregation.MAX, fold(Aggregation.MAX, on_time), older)[1] == 160
    assert late_delta(Aggregation.LATEST, fold(Aggregation.LATEST, on_time), older)[1] == 0
    assert late_delta(Aggregation.LATEST, fold(Aggregation.LATEST, on_time), below)[1] == 32
    seen = {"u1", "u2"}
    again = [Ev(unique_observation("u1", seen), T0, "d"), Ev(unique_observation("u3", seen), T0, "e")]
    assert late_delta(Aggregation.UNIQUE_COUNT, Total(D(2), 2, T0), again)[1] == 1


def test_sums_are_exact_however_they_are_batched() -> None:
    big = [Ev(D("1e30"), T0, "a"), Ev(D(1), T0, "b"), Ev(D(1), T0, "c")]
    one_by_one = EMPTY
    for e in big:
        one_by_one = merge(Aggregation.SUM, one_by_one, fold(Aggregation.SUM, [e]))
    assert billable(one_by_one) == billable(fold(Aggregation.SUM, big)) == D("1000000000000000000000000000002")
    assert str(billable(one_by_one)) == "1000000000000000000000000000002"


def test_a_sum_that_cannot_be_exact_raises_instead_of_rounding() -> None:
    with pytest.raises(Inexact):
        fold(Aggregation.SUM, [Ev(D(10) ** 300, T0, "a"), Ev(D("1e-300"), T0, "b")])


def test_latest_breaks_ties_by_event_id_and_ignores_totals_without_a_time() -> None:
    tie = [Ev(D(7), T0, "n2"), Ev(D(5), T0, "n3")]
    assert billable(fold(Aggregation.LATEST, tie)) == 5
    timeless = Total(D(9), 1)  # a row written before times were kept
    assert billable(merge(Aggregation.LATEST, timeless, fold(Aggregation.LATEST, tie))) == 5
    assert billable(merge(Aggregation.LATEST, fold(Aggregation.LATEST, tie), timeless)) == 5
    assert merge(Aggregation.LATEST, timeless, timeless).latest_time is None


def test_every_aggregation_has_a_merge_rule() -> None:
    assert set(MERGE_RULE) == set(Aggregation)
    assert MERGE_RULE[Aggregation.UNIQUE_COUNT] is MergeRule.ADD
