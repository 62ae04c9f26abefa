"""What a meter's aggregation is: a pure fold of events into one billable quantity.

Every aggregation is defined here once, as a small fold over the events of one
(subscription, meter, period, plan segment), the way docs/pricing.md describes it:

    aggregation   state kept                     one event folds in as       billable quantity
    count         events                         +1                          the number of events
    sum           the exact sum                  + value                     the sum
    max           the largest value seen         max(state, value)           the largest value
    latest        (time, event id, value)        the newer of the two        the newest event's value
    unique_count  the distinct values seen       ∪ {value}                   how many distinct values

A partial state (one worker batch, the rows already stored, the usage that arrived late) is
a `Total`, and two totals of the same aggregation combine with `merge`, which is associative
and commutative, so batching, replays and lateness can never change the quantity. The
Postgres upsert in `streams.sink` implements `merge` per `MergeRule`, and a test runs it
against this definition.

`unique_count` keeps its set of distinct values in the store (`usage_unique_values`), not in
memory: whoever folds an event first asks the set whether its value is new, and an event
counts 1 when it is and 0 when it is not (`unique_observation`). Totals of disjoint new
values merge by addition, which is why its `MergeRule` is `ADD`.

Arithmetic is exact: sums fold under `EXACT_SUM`, a context wide enough for any quantity the
value bounds allow, with `Inexact` trapped, so 10^30 + 1 + 1 is the same however the events
are batched, and an out-of-range sum raises instead of rounding.

Late usage is priced from the same folds: `late_delta` is billed(all events) − billed(on-time
events) for any aggregation, so a late `max` below the billed max adds nothing, an older late
`latest` adds nothing and a late unique value already counted adds nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow
from enum import StrEnum
from operator import attrgetter
from types import MappingProxyType
from typing import Final, NamedTuple, Protocol

from schemas.catalog import Aggregation

EXACT_SUM: Final = Context(prec=200, Emax=999_999, Emin=-999_999, traps=[Inexact, InvalidOperation, Overflow])
"""Decimal context for folding quantities: 200 significant digits, and raising rather than rounding."""

_ZERO = Decimal(0)
_ADD: Final = EXACT_SUM.add
_ORDER: Final = attrgetter("time", "event_id")  # events order by (time, id): the later one is "latest"
_ONE = Decimal(1)


class MergeRule(StrEnum):
    """How two partial totals of an aggregation combine; also the name of the Postgres upsert rule."""

    ADD = "add"  # quantities add (count, sum, and unique_count over disjoint new values)
    MAX = "max"  # the larger quantity wins
    LATEST = "latest"  # the quantity of the later (time, event id) wins


MERGE_RULE: Final[Mapping[Aggregation, MergeRule]] = MappingProxyType(
    {
        Aggregation.COUNT: MergeRule.ADD,
        Aggregation.SUM: MergeRule.ADD,
        Aggregation.UNIQUE_COUNT: MergeRule.ADD,
        Aggregation.MAX: MergeRule.MAX,
        Aggregation.LATEST: MergeRule.LATEST,
    }
)


class Observed(Protocol):
    """One event's contribution to a meter: its value (already 1 for count), time and id."""

    @property
    def value(self) -> Decimal: ...
    @property
    def time(self) -> datetime: ...
    @property
    def event_id(self) -> str: ...


class Total(NamedTuple):
    """A partial or final state of one aggregation.

    `quantity` is the billable quantity so far, `events` how many events were folded in
    (0: the empty total, which every merge leaves unchanged), `latest_time` the latest event
    time seen (kept for every aggregation: plan changes use it) and `latest_event` that
    event's id for `latest` meters (it breaks ties between events at the same instant).
    A named tuple rather than a dataclass: the worker makes one per total per batch.
    """

    quantity: Decimal = _ZERO
    events: int = 0
    latest_time: datetime | None = None
    latest_event: str | None = None


EMPTY: Final = Total()
_LATEST, _MAX = Aggregation.LATEST, Aggregation.MAX  # compared by identity on the hot path


def fold(aggregation: Aggregation, observed: Iterable[Observed], start: Total = EMPTY) -> Total:
    """`start` with every observation folded in, in one pass.

    For `unique_count` each observation's value must already say whether it is new (1) or
    not (0), see `unique_observation`.

    Raises:
        decimal.Inexact: a sum outside what `EXACT_SUM` holds exactly.
    """
    items = observed if isinstance(observed, list) else list(observed)
    if not items:
        return start
    total = Total._make(fold_row(aggregation, items))
    return total if start.events == 0 else merge(aggregation, start, total)


def fold_row(aggregation: Aggregation, items: Sequence[Observed]) -> tuple[Decimal, int, datetime, str | None]:
    """The fields of `fold(aggregation, items)` as a plain tuple, for at least one item.

    The worker's hot path (one call per total per batch): members compared by identity,
    a one-event total without arithmetic, sums with `EXACT_SUM.add`, no `Total` object.
    """
    if len(items) == 1:
        only = items[0]
        return only.value, 1, only.time, only.event_id if aggregation is _LATEST else None
    if aggregation is _LATEST:
        last = max(items, key=_ORDER)
        return last.value, len(items), last.time, last.event_id
    latest_time = max([item.time for item in items])
    if aggregation is _MAX:
        return max([item.value for item in items]), len(items), latest_time, None
    add, quantity = _ADD, _ZERO
    for item in items:
        quantity = add(quantity, item.value)
    return quantity, len(items), latest_time, None


def merge(aggregation: Aggregation, a: Total, b: Total) -> Total:
    """Two partial totals of the same aggregation as one (associative and commutative).

    Raises:
        decimal.Inexact: a sum outside what `EXACT_SUM` holds exactly.
    """
    if a.events == 0:
        return b
    if b.events == 0:
        return a
    rule = MERGE_RULE[aggregation]
    events = a.events + b.events
    times = [t for t in (a.latest_time, b.latest_time) if t is not None]
    latest_time = max(times) if times else None
    if rule is MergeRule.ADD:
        return Total(_ADD(a.quantity, b.quantity), events, latest_time)
    if rule is MergeRule.MAX:
        return Total(max(a.quantity, b.quantity), events, latest_time)
    newer = b if _newer(b, a) else a
    return Total(newer.quantity, events, newer.latest_time, newer.latest_event)


def billable(total: Total) -> Decimal:
    """The quantity a total bills: what the pricing models price."""
    return total.quantity


def late_delta(aggregation: Aggregation, billed: Total, late: Iterable[Observed]) -> tuple[Total, Decimal]:
    """What late events change: the new total, and billable(all) − billable(billed).

    `billed` is the total the earlier invoices billed (the on-time total plus late usage
    already billed); the difference is 0 when the late events do not move the quantity.
    """
    after = fold(aggregation, late, billed)
    return after, EXACT_SUM.subtract(billable(after), billable(billed))


def unique_observation(value: str, seen: set[str]) -> Decimal:
    """What a `unique_count` event adds: 1 when `value` is new to `seen` (which it joins), else 0.

    The store's `usage_unique_values` plays `seen` for the worker; this is its pure model.
    """
    if value in seen:
        return _ZERO
    seen.add(value)
    return _ONE


def _newer(a: Total, b: Total) -> bool:
    """Whether `a` holds a later (time, event id) than `b`; a total without a time is never newer."""
    if a.latest_time is None or b.latest_time is None:
        return b.latest_time is None and a.latest_time is not None
    return (a.latest_time, a.latest_event or "") > (b.latest_time, b.latest_event or "")
