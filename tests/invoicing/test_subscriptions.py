"""Subscription lifecycles against a real Postgres: cancels, trials, dunning, the close, the migration."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from invoicing import models as m
from invoicing.catalog import apply_catalog, parse_catalog
from invoicing.close import CloseSummary, close_due
from invoicing.commands import get_invoice, mark_paid
from invoicing.db import MIGRATIONS, head_revision, make_engine, upgrade
from invoicing.lifecycle import (
    SUBSCRIPTION_TRANSITIONS,
    IllegalTransition,
    SubscriptionAction,
    SubscriptionState,
    SubscriptionStatus,
    advance_subscription,
)
from invoicing.subscription_jobs import end_trials, mark_overdue, reactivate_paid
from invoicing.subscriptions import (
    SubscriptionNotFound,
    cancel_now,
    get_subscription,
    revoke_cancel,
    schedule_cancel,
)
from schemas.errors import InvalidInput

pytestmark = pytest.mark.integration

GRACE = timedelta(hours=1)
JAN1, FEB1, MAR1 = (datetime(2026, month, 1, tzinfo=UTC) for month in (1, 2, 3))
WHO = {"actor": "test", "reason": "asked by the customer"}


def _plan(code: str, *, trial_usage_billed: bool = True) -> dict[str, Any]:
    return {
        "organization": "acme",
        "code": code,
        "currency": "USD",
        "interval": "month",
        "trial_usage_billed": trial_usage_billed,
        "charges": [
            {"key": "base", "model": "flat", "amount": "29.00"},
            {"key": "api", "meter": "api_calls", "model": "per_unit", "unit_amount": "0.01"},
        ],
    }


def _catalog(*subscriptions: dict[str, Any]) -> dict[str, Any]:
    return {
        "organizations": [{"id": "acme", "name": "Acme Inc", "currency": "USD"}],
        "meters": [{"organization": "acme", "key": "api_calls", "event_type": "api_request", "aggregation": "count"}],
        "plans": [_plan("std"), _plan("trial_free", trial_usage_billed=False)],
        "customers": [{"organization": "acme", "id": "cus_1", "name": "Globex"}],
        "subscriptions": list(subscriptions),
    }


def _sub(sub_id: str, plan: str = "std", **extra: str) -> dict[str, Any]:
    return {
        "organization": "acme",
        "id": sub_id,
        "customer": "cus_1",
        "plan": plan,
        "start": "2026-01-01T00:00:00Z",
    } | extra


@pytest.fixture
def db(database_url: str) -> Iterator[Engine]:
    """A migrated database with org acme and subscription sub_1 (plan std: 29.00 flat + 0.01 per API call)."""
    engine = make_engine(database_url, pool_size=4)
    try:
        upgrade(engine)
        apply_catalog(engine, parse_catalog(_catalog(_sub("sub_1"))), now=JAN1)
        yield engine
    finally:
        engine.dispose()


def _usage(engine: Engine, sub_id: str, period_start: datetime, period_end: datetime, calls: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO usage_totals (organization_id, subscription_id, meter_key, period_start, segment_start, "
                "period_end, quantity, event_count, closed) "
                "VALUES ('acme', :s, 'api_calls', :ps, :ps, :pe, :q, :q, false)"
            ),
            {"s": sub_id, "ps": period_start, "pe": period_end, "q": calls},
        )


def _close(engine: Engine, as_of: datetime) -> CloseSummary:
    return close_due(engine, as_of=as_of, grace=GRACE, clock=lambda: as_of)


def _lines(engine: Engine, invoice_id: str) -> dict[str, int]:
    return {line["line_key"]: line["amount_minor"] for line in get_invoice(engine, invoice_id)["lines"]}


def _moves(sub: dict[str, Any]) -> list[tuple[str | None, str, str]]:
    return [(h["from"], h["to"], h["actor"]) for h in sub["status_history"]]


# --- cancel now ----------------------------------------------------------------------------------


def test_cancel_now_mid_period_bills_a_prorated_final_invoice_and_ends(db: Engine) -> None:
    _usage(db, "sub_1", JAN1, FEB1, 500)
    at = datetime(2026, 1, 16, tzinfo=UTC)
    sub = cancel_now(db, "acme", "sub_1", now=at, **WHO)
    assert (sub["status"], sub["end_at"], sub["canceled_at"]) == ("canceled", "2026-01-16T00:00:00Z", sub["end_at"])
    assert sub["next_close_at"] == "2026-01-16T00:00:00Z", "the final period is due at the cancel, not at Feb 1"

    assert _close(db, at + GRACE - timedelta(seconds=1)).invoices == 0, "the late grace still applies"
    summary = _close(db, at + GRACE)
    assert summary.invoices == 1
    # 15 of January's 31 days of 29.00 = 14.0322... → 14.03; usage up to the cancel is billed whole.
    assert _lines(db, summary.invoice_ids[0]) == {"base": 1403, "api": 500}
    invoice = get_invoice(db, summary.invoice_ids[0])
    assert (invoice["period_start"], invoice["total_minor"]) == ("2026-01-01T00:00:00Z", 1903)

    sub = get_subscription(db, "acme", "sub_1")
    assert (sub["status"], sub["next_close_at"]) == ("ended", None)
    assert _moves(sub) == [(None, "active", "catalog"), ("active", "canceled", "test"), ("canceled", "ended", "close")]
    assert [h["seq"] for h in sub["status_history"]] == [1, 2, 3]
    assert _close(db, datetime(2026, 6, 1, tzinfo=UTC)).invoices == 0, "nothing after the final invoice"


def test_cancel_now_in_a_later_period_first_closes_the_earlier_one_in_full(db: Engine) -> None:
    at = datetime(2026, 2, 8, tzinfo=UTC)  # January not closed yet: its invoice is whole, February's is 7/28
    cancel_now(db, "acme", "sub_1", now=at, **WHO)
    summary = _close(db, at + GRACE)
    assert summary.invoices == 2
    assert [_lines(db, i)["base"] for i in summary.invoice_ids] == [2900, 725]
    assert get_subscription(db, "acme", "sub_1")["status"] == "ended"


# --- scheduled cancel ----------------------------------------------------------------------------


def test_scheduled_then_revoked_cancel_keeps_renewing(db: Engine) -> None:
    sub = schedule_cancel(db, "acme", "sub_1", now=datetime(2026, 1, 10, tzinfo=UTC), **WHO)
    assert (sub["status"], sub["cancel_at_period_end"], sub["end_at"]) == ("active", True, "2026-02-01T00:00:00Z")
    sub = revoke_cancel(db, "acme", "sub_1", now=datetime(2026, 1, 20, tzinfo=UTC), actor="test", reason="changed mind")
    assert (sub["cancel_at_period_end"], sub["end_at"], sub["canceled_at"]) == (False, None, None)
    assert [h["reason"] for h in sub["status_history"][1:]] == [
        "cancel scheduled for 2026-02-01T00:00:00Z: asked by the customer",
        "scheduled cancel revoked: changed mind",
    ]

    summary = _close(db, MAR1 + GRACE)
    assert summary.invoices == 2
    assert [_lines(db, i)["base"] for i in summary.invoice_ids] == [2900, 2900]
    sub = get_subscription(db, "acme", "sub_1")
    assert (sub["status"], sub["next_close_at"]) == ("active", "2026-04-01T00:00:00Z")


def test_scheduled_cancel_ends_at_period_end_with_a_full_last_invoice(db: Engine) -> None:
    _usage(db, "sub_1", JAN1, FEB1, 250)
    schedule_cancel(db, "acme", "sub_1", now=datetime(2026, 1, 10, tzinfo=UTC), **WHO)
    with pytest.raises(IllegalTransition, match="ended at 2026-02-01"):
        revoke_cancel(db, "acme", "sub_1", now=FEB1, **WHO)  # the period has ended: too late, even before the close

    summary = _close(db, FEB1 + GRACE)
    assert summary.invoices == 1
    assert _lines(db, summary.invoice_ids[0]) == {"base": 2900, "api": 250}
    sub = get_subscription(db, "acme", "sub_1")
    assert (sub["status"], sub["cancel_at_period_end"], sub["next_close_at"]) == ("ended", False, None)
    assert _moves(sub)[-1] == ("active", "ended", "close")
    assert _close(db, datetime(2026, 7, 1, tzinfo=UTC)).invoices == 0


def test_reapplying_the_catalog_keeps_status_cancel_and_history(db: Engine) -> None:
    schedule_cancel(db, "acme", "sub_1", now=datetime(2026, 1, 10, tzinfo=UTC), **WHO)
    before = get_subscription(db, "acme", "sub_1")
    apply_catalog(db, parse_catalog(_catalog(_sub("sub_1"))), now=datetime(2026, 1, 11, tzinfo=UTC))
    assert get_subscription(db, "acme", "sub_1") == before


def test_a_catalog_end_times_the_cursor_and_moving_it_retimes_it(db: Engine) -> None:
    apply_catalog(db, parse_catalog(_catalog(_sub("sub_1", end="2026-01-20T00:00:00Z"))))
    assert get_subscription(db, "acme", "sub_1")["next_close_at"] == "2026-01-20T00:00:00Z"
    apply_catalog(db, parse_catalog(_catalog(_sub("sub_1"))))  # the end is dropped again
    sub = get_subscription(db, "acme", "sub_1")
    assert (sub["end_at"], sub["next_close_at"]) == (None, "2026-02-01T00:00:00Z")


# --- trials ----------------------------------------------------------------------------------------


def test_trial_bills_no_flat_charge_and_prorates_from_trial_end(db: Engine) -> None:
    trial = _sub("sub_t", "trial_free", billing_anchor="2026-01-01T00:00:00Z", trial_end="2026-01-11T00:00:00Z")
    apply_catalog(db, parse_catalog(_catalog(_sub("sub_1"), trial)), now=JAN1)
    assert get_subscription(db, "acme", "sub_t")["status"] == "trialing"
    _usage(db, "sub_t", JAN1, FEB1, 300)
    _usage(db, "sub_t", FEB1, MAR1, 400)

    assert end_trials(db, now=datetime(2026, 1, 10, 23, tzinfo=UTC)) == 0
    assert end_trials(db, now=datetime(2026, 1, 11, tzinfo=UTC)) == 1
    summary = _close(db, MAR1 + GRACE)
    jan, feb = (i for i in summary.invoice_ids if get_invoice(db, i)["subscription"] == "sub_t")
    # January straddles the trial's end: 21/31 of 29.00 = 19.645... → 19.65; its usage is not billed (trial_free).
    assert _lines(db, jan) == {"base": 1965, "api": 0}
    assert _lines(db, feb) == {"base": 2900, "api": 400}
    sub = get_subscription(db, "acme", "sub_t")
    assert _moves(sub) == [(None, "trialing", "catalog"), ("trialing", "active", "scheduler")]


def test_trial_without_an_anchor_is_anchored_on_its_end_and_bills_trial_usage_if_the_plan_says_so(db: Engine) -> None:
    trial = _sub("sub_t", trial_end="2026-01-15T00:00:00Z")
    apply_catalog(db, parse_catalog(_catalog(_sub("sub_1"), trial)))
    sub = get_subscription(db, "acme", "sub_t")
    assert (sub["billing_anchor"], sub["next_period_start"]) == ("2026-01-15T00:00:00Z", "2025-12-15T00:00:00Z")
    _usage(db, "sub_t", datetime(2025, 12, 15, tzinfo=UTC), datetime(2026, 1, 15, tzinfo=UTC), 100)
    summary = close_due(db, as_of=FEB1, grace=GRACE, clock=lambda: FEB1)
    trial_invoice = next(i for i in summary.invoice_ids if get_invoice(db, i)["subscription"] == "sub_t")
    assert _lines(db, trial_invoice) == {"base": 0, "api": 100}, "plan std bills trial usage, never the flat fee"


def test_a_zero_trial_invoice_is_never_overdue(db: Engine) -> None:
    apply_catalog(db, parse_catalog(_catalog(_sub("sub_t", "trial_free", trial_end="2026-01-15T00:00:00Z"))))
    end_trials(db, now=datetime(2026, 1, 15, tzinfo=UTC))
    _close(db, datetime(2026, 1, 15, 2, tzinfo=UTC))
    assert mark_overdue(db, now=datetime(2026, 6, 1, tzinfo=UTC)) == 0


def test_a_trial_must_end_after_start_and_before_end(db: Engine) -> None:
    for bad in (
        {"trial_end": "2026-01-01T00:00:00Z"},
        {"trial_end": "2026-02-01T00:00:00Z", "end": "2026-01-20T00:00:00Z"},
    ):
        with pytest.raises(InvalidInput, match="trial_end must be"):
            parse_catalog(_catalog(_sub("sub_x", **bad)))


# --- dunning -------------------------------------------------------------------------------------


def test_overdue_moves_to_past_due_and_payment_reactivates(db: Engine) -> None:
    invoice_id = _close(db, FEB1 + GRACE).invoice_ids[0]
    due = datetime.fromisoformat(get_invoice(db, invoice_id)["due_at"].replace("Z", "+00:00"))
    assert mark_overdue(db, now=due) == 0, "due_at itself is not overdue yet"
    assert mark_overdue(db, now=due + timedelta(seconds=1)) == 1
    sub = get_subscription(db, "acme", "sub_1")
    assert sub["status"] == "past_due"
    assert sub["status_history"][-1]["reason"] == "invoice ACME-2026-000001 overdue since 2026-03-03T01:00:00Z"
    assert mark_overdue(db, now=due + timedelta(days=1)) == 0, "already past due"
    assert reactivate_paid(db, now=due + timedelta(days=1)) == 0, "still unpaid"

    mark_paid(db, invoice_id, now=due + timedelta(days=2), actor="test", reason="wire received")
    assert reactivate_paid(db, now=due + timedelta(days=2)) == 1
    sub = get_subscription(db, "acme", "sub_1")
    assert sub["status"] == "active"
    assert _moves(sub)[1:] == [("active", "past_due", "scheduler"), ("past_due", "active", "scheduler")]


def test_dunning_leaves_canceled_subscriptions_alone(db: Engine) -> None:
    invoice_id = _close(db, FEB1 + GRACE).invoice_ids[0]
    cancel_now(db, "acme", "sub_1", now=datetime(2026, 2, 10, tzinfo=UTC), **WHO)
    assert mark_overdue(db, now=datetime(2026, 4, 1, tzinfo=UTC)) == 0
    assert get_invoice(db, invoice_id)["status"] == "issued"


# --- illegal moves ---------------------------------------------------------------------------------


def _snapshot(engine: Engine) -> tuple[dict[str, Any], int]:
    with engine.connect() as conn:
        history = conn.execute(text("SELECT count(*) FROM subscription_status_history")).scalar_one()
    return get_subscription(engine, "acme", "sub_1"), history


def test_illegal_moves_raise_and_change_nothing(db: Engine) -> None:
    at = datetime(2026, 1, 10, tzinfo=UTC)
    before = _snapshot(db)
    with pytest.raises(
        IllegalTransition,
        match="subscription acme/sub_1 is active; only a cancel scheduled for a period's end can be revoked",
    ):
        revoke_cancel(db, "acme", "sub_1", now=at, **WHO)
    with pytest.raises(IllegalTransition, match="not started"):
        cancel_now(db, "acme", "sub_1", now=datetime(2025, 12, 31, tzinfo=UTC), **WHO)
    with pytest.raises(InvalidInput, match="timezone"):
        cancel_now(db, "acme", "sub_1", now=datetime(2026, 1, 10), **WHO)  # naive on purpose
    with pytest.raises(SubscriptionNotFound, match="sub_404") as missing:
        cancel_now(db, "acme", "sub_404", now=at, **WHO)
    assert missing.value.code == "subscription_not_found" and isinstance(missing.value, LookupError)
    assert _snapshot(db) == before

    schedule_cancel(db, "acme", "sub_1", now=at, **WHO)
    before = _snapshot(db)
    with pytest.raises(
        IllegalTransition,
        match=r"active \(cancel scheduled\); only a trialing, active or past-due subscription without a scheduled",
    ):
        schedule_cancel(db, "acme", "sub_1", now=at, **WHO)
    assert _snapshot(db) == before

    cancel_now(db, "acme", "sub_1", now=at, **WHO)
    before = _snapshot(db)
    for move in (cancel_now, schedule_cancel, revoke_cancel):
        with pytest.raises(IllegalTransition, match="is canceled; only "):
            move(db, "acme", "sub_1", now=at, **WHO)
    assert _snapshot(db) == before


def test_the_database_refuses_an_unknown_status(db: Engine) -> None:
    with pytest.raises(IntegrityError, match="subscription_status"), db.begin() as conn:
        conn.execute(text("UPDATE subscriptions SET status = 'paused'"))


# --- migration -----------------------------------------------------------------------------------


def test_migration_0002_upgrades_a_0001_database_with_subscriptions(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0001")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO organizations VALUES ('acme', 'Acme', 'USD', 30, 'ACME')"))
            conn.execute(
                text("INSERT INTO plans VALUES ('acme', 'std', 'USD', CAST(:spec AS jsonb))"),
                {"spec": '{"code": "std", "currency": "USD", "charges": []}'},
            )
            conn.execute(text("INSERT INTO customers VALUES ('acme', 'cus_1', 'Globex')"))
            conn.execute(
                text(
                    "INSERT INTO subscriptions (organization_id, id, customer_id, plan_code, start_at, billing_anchor, "
                    "next_period_start, next_close_at, close_attempts) VALUES ('acme', 'old', 'cus_1', 'std', "
                    "'2025-06-01Z', '2025-06-01Z', '2025-06-01Z', '2025-07-01Z', 0)"
                )
            )
        assert upgrade(engine) == ("0001", head_revision())
        sub = get_subscription(engine, "acme", "old")
        assert (sub["status"], sub["cancel_at_period_end"], sub["trial_end"], sub["canceled_at"]) == (
            "active",
            False,
            None,
            None,
        )
        assert _moves(sub) == [(None, "active", "migration")]
        schedule_cancel(engine, "acme", "old", now=datetime(2025, 6, 10, tzinfo=UTC), **WHO)
        assert _moves(get_subscription(engine, "acme", "old"))[-1] == ("active", "active", "test")
    finally:
        engine.dispose()


# --- property: random command sequences ----------------------------------------------------------

_ids = itertools.count()
ACTIONS = ("cancel_now", "schedule", "revoke", "overdue", "paid", "end_trial", "tick")


class _Run:
    """One subscription driven by random commands, with the table's prediction alongside."""

    def __init__(self, engine: Engine, trial: bool) -> None:
        self.engine, self.sub = engine, f"h{next(_ids)}"
        self.trial_end = datetime(2026, 1, 20, tzinfo=UTC)
        extra = {"trial_end": "2026-01-20T00:00:00Z", "billing_anchor": "2026-01-01T00:00:00Z"} if trial else {}
        apply_catalog(engine, parse_catalog(_catalog(_sub(self.sub, **extra))))
        self.state = advance_subscription(None, SubscriptionAction.START_TRIAL if trial else SubscriptionAction.START)
        self.clock = datetime(2026, 1, 2, tzinfo=UTC)
        self.invoices = 0

    def job(self, action: SubscriptionAction) -> None:
        """A batch job moves only what the table allows and leaves the rest as it is."""
        self.state = SUBSCRIPTION_TRANSITIONS.get((self.state, action), self.state)

    def step(self, name: str) -> None:
        self.clock += timedelta(hours=1)
        A = SubscriptionAction
        commands = {
            "cancel_now": (cancel_now, A.CANCEL_NOW),
            "schedule": (schedule_cancel, A.SCHEDULE_CANCEL),
            "revoke": (revoke_cancel, A.REVOKE_CANCEL),
        }
        if name in commands:
            run, action = commands[name]
            try:
                expected = advance_subscription(self.state, action)
            except IllegalTransition:
                before = get_subscription(self.engine, "acme", self.sub)
                with pytest.raises(IllegalTransition):
                    run(self.engine, "acme", self.sub, now=self.clock, **WHO)
                assert get_subscription(self.engine, "acme", self.sub) == before
                return
            after = run(self.engine, "acme", self.sub, now=self.clock, **WHO)
            self.state = expected
            if after["next_close_at"] is None:  # cancel with nothing left to invoice: ends at once
                self.job(A.PERIOD_END_REACHED)
        elif name == "overdue":
            self._overdue_invoice()
            mark_overdue(self.engine, now=self.clock)
            self.job(A.INVOICE_OVERDUE)
        elif name == "paid":
            self._pay_all()
            reactivate_paid(self.engine, now=self.clock)
            self.job(A.INVOICE_PAID)
        elif name == "end_trial":
            self.clock = max(self.clock, self.trial_end)
            end_trials(self.engine, now=self.clock)
            if self.clock >= self.trial_end:
                self.job(A.TRIAL_END)
        else:
            self._tick()

    def _tick(self) -> None:
        """What a scheduler tick at the next due time does: close, then end a trial that has passed."""
        due = get_subscription(self.engine, "acme", self.sub)["next_close_at"]
        if due is not None:
            self.clock = max(self.clock, datetime.fromisoformat(due.replace("Z", "+00:00")) + GRACE)
        close_due(self.engine, as_of=self.clock, grace=GRACE, clock=lambda: self.clock, organization="acme")
        self.job(SubscriptionAction.PERIOD_END_REACHED)
        end_trials(self.engine, now=self.clock)
        if self.clock >= self.trial_end:
            self.job(SubscriptionAction.TRIAL_END)

    def _overdue_invoice(self) -> None:
        self.invoices += 1
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO invoices (id, organization_id, number, customer_id, subscription_id, status, "
                    "currency, period_start, period_end, issued_at, due_at, subtotal_minor, total_minor) VALUES "
                    "(:id, 'acme', :id, 'cus_1', :s, 'issued', 'USD', :ps, :ps + interval '1 day', :d, :d, 100, 100)"
                ),
                {
                    "id": f"{self.sub}-x{self.invoices}",
                    "s": self.sub,
                    "ps": datetime(2000, 1, self.invoices, tzinfo=UTC),
                    "d": self.clock - timedelta(days=1),
                },
            )

    def _pay_all(self) -> None:
        with Session(self.engine) as session:
            ids = session.scalars(
                select(m.Invoice.id).where(m.Invoice.subscription_id == self.sub, m.Invoice.status == "issued")
            ).all()
        for invoice_id in ids:
            mark_paid(self.engine, invoice_id, now=self.clock, actor="test", reason="paid")

    def check(self) -> None:
        sub = get_subscription(self.engine, "acme", self.sub)
        assert SubscriptionState(SubscriptionStatus(sub["status"]), sub["cancel_at_period_end"]) == self.state
        history = sub["status_history"]
        assert [h["seq"] for h in history] == list(range(1, len(history) + 1))
        assert history[0]["from"] is None
        assert all(prev["to"] == nxt["from"] for prev, nxt in itertools.pairwise(history))
        assert history[-1]["to"] == sub["status"]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trial=st.booleans(), steps=st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=12))
def test_random_command_sequences_follow_the_transition_table(db: Engine, trial: bool, steps: list[str]) -> None:
    run = _Run(db, trial)
    run.check()
    for name in steps:
        run.step(name)
        run.check()
