"""Planning a batch (pure): routing, in-batch dedup, dead-letter reasons, periods."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from rating.timeline import PlanHistory
from schemas.catalog import Aggregation
from schemas.plans import Interval, Plan
from streams.batch import Record, plan_batch
from streams.decode import Reason
from streams.snapshot import CatalogSnapshot, MeterView, SubscriptionView

NOW = datetime(2026, 2, 10, tzinfo=UTC)
T = "2026-01-20T10:00:00Z"


def _billing(*meters: str, **plan: Any) -> Plan:
    """A plan with one per-unit charge per meter key."""
    charges = [{"key": m, "model": "per_unit", "meter": m, "unit_amount": "1"} for m in meters]
    return Plan.model_validate({"code": "p_" + "_".join(meters), "currency": "USD", "charges": charges, **plan})


def _meter(key: str, event_type: str, agg: Aggregation, path: str = "", **filters: list[str]) -> MeterView:
    return MeterView(
        key, event_type, agg, tuple(path.split(".")) if path else (), {k: frozenset(v) for k, v in filters.items()}
    )


def _snapshot(*meters: MeterView, subs: tuple[SubscriptionView, ...] | None = None) -> CatalogSnapshot:
    if subs is None:
        subs = (
            SubscriptionView(
                "acme",
                "sub_1",
                "cus_1",
                datetime(2026, 1, 16, tzinfo=UTC),
                None,
                datetime(2026, 1, 1, tzinfo=UTC),
                Interval.MONTH,
                1,
                PlanHistory(_billing(*(m.key for m in meters))),
            ),
        )
    return CatalogSnapshot(
        organizations=frozenset({"acme"}),
        meters_by_type={
            ("acme", m.event_type): tuple(x for x in meters if x.event_type == m.event_type) for m in meters
        },
        subscriptions_by_customer={
            ("acme", s.customer): tuple(x for x in subs if x.customer == s.customer) for s in subs
        },
    )


def _rec(offset: int, body: dict[str, Any] | bytes, key: bytes = b"acme") -> Record:
    value = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Record(0, offset, key, value)


def _ev(i: str, type_: str = "api_request", time: str = T, customer: str = "cus_1", **props: Any) -> dict[str, Any]:
    return {"id": i, "type": type_, "customer": customer, "time": time, "properties": props}


def _plan(snapshot: CatalogSnapshot, *records: Record) -> Any:
    return plan_batch(records, snapshot, now=NOW, future_tolerance=timedelta(minutes=5))


def test_counts_and_sums_route_to_the_subscription_period() -> None:
    snap = _snapshot(
        _meter("calls", "api_request", Aggregation.COUNT), _meter("tokens", "llm_call", Aggregation.SUM, "usage.tokens")
    )
    plan = _plan(snap, _rec(0, _ev("a")), _rec(1, _ev("b", "llm_call", usage={"tokens": 12.5})))
    assert [(c.meter, c.value) for c in plan.contributions] == [("calls", 1), ("tokens", Decimal("12.5"))]
    assert {(c.period_start, c.period_end) for c in plan.contributions} == {
        (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
    }
    assert plan.dead_letters == [] and plan.in_batch_duplicates == 0


def test_in_batch_duplicates_count_once_whatever_the_payload() -> None:
    snap = _snapshot(_meter("calls", "api_request", Aggregation.COUNT))
    plan = _plan(snap, _rec(0, _ev("a")), _rec(1, _ev("a", time="2026-01-21T00:00:00Z")), _rec(2, _ev("a")))
    assert len(plan.events) == 1 and plan.in_batch_duplicates == 2


def test_cloudevents_dedup_on_source_and_id() -> None:
    snap = _snapshot(_meter("calls", "api_request", Aggregation.COUNT))

    def ce(source: str) -> dict[str, Any]:
        return {
            "specversion": "1.0",
            "id": "1",
            "source": source,
            "type": "api_request",
            "subject": "cus_1",
            "time": T,
            "data": {},
        }

    plan = _plan(snap, _rec(0, ce("/a")), _rec(1, ce("/b")), _rec(2, ce("/a")))
    assert len(plan.events) == 2 and plan.in_batch_duplicates == 1


@pytest.mark.parametrize(
    ("record", "code", "needle"),
    [
        (_rec(0, b"{nope"), Reason.INVALID_JSON, ""),
        (_rec(0, {"id": "a", "type": "api_request", "time": T}), Reason.SCHEMA, "customer"),
        (_rec(0, _ev("a"), key=b""), Reason.SCHEMA, "key"),
        (_rec(0, {**_ev("a"), "organization": "other"}), Reason.SCHEMA, "organization"),
        (_rec(0, _ev("a"), key=b"globex"), Reason.UNKNOWN_ORGANIZATION, "globex"),
        (_rec(0, _ev("a", customer="ghost")), Reason.UNKNOWN_CUSTOMER, "ghost"),
        (_rec(0, _ev("a", time="2026-01-10T00:00:00Z")), Reason.NO_ACTIVE_SUBSCRIPTION, "cus_1"),
        (_rec(0, _ev("a", "llm_call", usage={"tokens": "many"})), Reason.VALUE_NOT_NUMERIC, "usage.tokens"),
        (_rec(0, _ev("a", time="2026-03-01T00:00:00Z")), Reason.TOO_FAR_IN_FUTURE, "2026-03-01"),
    ],
)
def test_dead_letter_reasons(record: Record, code: Reason, needle: str) -> None:
    snap = _snapshot(
        _meter("calls", "api_request", Aggregation.COUNT), _meter("tokens", "llm_call", Aggregation.SUM, "usage.tokens")
    )
    plan = _plan(snap, record)
    [dead] = plan.dead_letters
    assert dead.code is code and needle in dead.detail
    assert plan.events == [] and (dead.partition, dead.offset) == (0, 0)


def test_filters_and_one_event_feeding_several_meters() -> None:
    snap = _snapshot(
        _meter("all", "api_request", Aggregation.COUNT),
        _meter("gets", "api_request", Aggregation.COUNT, method=["GET", "HEAD"]),
        _meter("peak", "api_request", Aggregation.MAX, "latency_ms"),
    )
    plan = _plan(snap, _rec(0, _ev("a", method="GET", latency_ms=7)), _rec(1, _ev("b", method="POST", latency_ms=3)))
    assert sorted((c.dedup_key, c.meter) for c in plan.contributions) == [
        ("a", "all"),
        ("a", "gets"),
        ("a", "peak"),
        ("b", "all"),
        ("b", "peak"),
    ]


def test_event_on_a_boundary_belongs_to_the_later_period() -> None:
    snap = _snapshot(_meter("calls", "api_request", Aggregation.COUNT))
    [c] = _plan(snap, _rec(0, _ev("a", time="2026-02-01T00:00:00Z"))).contributions
    assert c.period_start == datetime(2026, 2, 1, tzinfo=UTC)


def _sub(sub_id: str, start: str, end: str | None = None, **kw: Any) -> SubscriptionView:
    return SubscriptionView(
        "acme",
        sub_id,
        "cus_1",
        datetime.fromisoformat(start),
        None if end is None else datetime.fromisoformat(end),
        datetime(2026, 1, 1, tzinfo=UTC),
        Interval.MONTH,
        1,
        PlanHistory(_billing("calls"), kw.pop("changes", ())),
        **kw,
    )


def test_routing_is_not_reused_outside_its_window() -> None:
    # sub_1 ends on Jan 20 and sub_2 starts then; periods roll over on Feb 1. The events
    # alternate so that each one leaves the window the previous one's routing was cached for.
    snap = _snapshot(
        _meter("calls", "api_request", Aggregation.COUNT),
        subs=(
            _sub("sub_1", "2026-01-01T00:00:00+00:00", "2026-01-20T00:00:00+00:00"),
            _sub("sub_2", "2026-01-20T00:00:00+00:00"),
        ),
    )
    times = [
        "2026-01-19T23:59:59Z",
        "2026-01-20T00:00:00Z",
        "2026-01-19T00:00:00Z",
        "2026-02-01T00:00:00Z",
        "2026-01-31T23:59:59Z",
        "2026-02-03T00:00:00Z",
    ]
    plan = _plan(snap, *(_rec(i, _ev(f"e{i}", time=t)) for i, t in enumerate(times)))
    assert [(c.subscription, c.period_start.month) for c in plan.contributions] == [
        ("sub_1", 1),
        ("sub_2", 1),
        ("sub_1", 1),
        ("sub_2", 2),
        ("sub_2", 1),
        ("sub_2", 2),
    ]


def test_routing_follows_plan_segments() -> None:
    # A change on Jan 25 to a plan without the `calls` meter, and back on Jan 28.
    change, back = datetime(2026, 1, 25, tzinfo=UTC), datetime(2026, 1, 28, tzinfo=UTC)
    sub = _sub("sub_1", "2026-01-01T00:00:00+00:00", changes=((change, _billing()), (back, _billing("calls"))))
    snap = _snapshot(_meter("calls", "api_request", Aggregation.COUNT), subs=(sub,))
    times = ["2026-01-24T00:00:00Z", "2026-01-26T00:00:00Z", "2026-01-29T00:00:00Z", "2026-01-20T00:00:00Z"]
    plan = _plan(snap, *(_rec(i, _ev(f"e{i}", time=t)) for i, t in enumerate(times)))
    assert [(c.dedup_key, c.segment_start.day) for c in plan.contributions] == [("e0", 1), ("e2", 28), ("e3", 1)]
    assert len(plan.events) == 4 and plan.dead_letters == []


def test_routing_splits_at_the_trial_end_when_trial_usage_is_free() -> None:
    # A trial ending Jan 20 at noon, inside January: usage before it and after it are kept apart.
    trial_end = datetime(2026, 1, 20, 12, tzinfo=UTC)
    free = _sub("sub_1", "2026-01-01T00:00:00+00:00", trial_end=trial_end)
    free.history = PlanHistory(_billing("calls", trial_usage_billed=False))
    snap = _snapshot(_meter("calls", "api_request", Aggregation.COUNT), subs=(free,))
    times = ["2026-01-20T11:59:59Z", "2026-01-20T12:00:00Z", "2026-01-02T00:00:00Z", "2026-02-02T00:00:00Z"]
    plan = _plan(snap, *(_rec(i, _ev(f"e{i}", time=t)) for i, t in enumerate(times)))
    assert [(c.dedup_key, c.period_start.month, c.segment_start) for c in plan.contributions] == [
        ("e0", 1, datetime(2026, 1, 1, tzinfo=UTC)),
        ("e1", 1, trial_end),
        ("e2", 1, datetime(2026, 1, 1, tzinfo=UTC)),
        ("e3", 2, datetime(2026, 2, 1, tzinfo=UTC)),
    ]
    # A plan that bills trial usage keeps the period whole.
    billed = _sub("sub_1", "2026-01-01T00:00:00+00:00", trial_end=trial_end)
    snap = _snapshot(_meter("calls", "api_request", Aggregation.COUNT), subs=(billed,))
    plan = _plan(snap, *(_rec(i, _ev(f"e{i}", time=t)) for i, t in enumerate(times[:2])))
    assert {c.segment_start for c in plan.contributions} == {datetime(2026, 1, 1, tzinfo=UTC)}
