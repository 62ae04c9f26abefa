"""Invoice state commands against a real Postgres: transitions, history, races, numbering."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from invoicing import models as m
from invoicing.commands import (
    ConcurrentUpdate,
    InvoiceNotFound,
    get_invoice,
    invoice_parties,
    issue_invoice,
    mark_paid,
    mark_uncollectible,
    void_invoice,
)
from invoicing.lifecycle import IllegalTransition
from schemas.errors import InvalidInput, ValoraError
from tests.conftest import wait_for
from tests.helpers import race
from tests.invoicing.conftest import history_rows

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 5, 9, 30, tzinfo=UTC)
Command = Callable[..., dict[str, Any]]


def insert_draft(engine: Engine, invoice_id: str, month: int) -> str:
    """A draft invoice (no number, no dates) for sub_1's period starting on the 1st of `month`."""
    start = datetime(2026, month, 1, tzinfo=UTC)
    end = datetime(2026, month + 1, 1, tzinfo=UTC)
    with Session(engine) as session, session.begin():
        session.add(
            m.Invoice(
                id=invoice_id,
                organization_id="acme",
                number=None,
                customer_id="cus_1",
                subscription_id="sub_1",
                status="draft",
                currency="USD",
                period_start=start,
                period_end=end,
                issued_at=None,
                due_at=None,
                subtotal_minor=2900,
                total_minor=2900,
            )
        )
        session.flush()
        session.add(
            m.InvoiceLine(
                invoice_id=invoice_id,
                line_key="base",
                position=1,
                charge="base",
                kind="flat",
                description="base: flat 29.00",
                quantity=Decimal(1),
                amount=Decimal("29.00"),
                amount_minor=2900,
                service_start=start,
                service_end=end,
            )
        )
    return invoice_id


# --- legal transitions --------------------------------------------------------------------


def test_issue_numbers_and_dates_a_draft(engine: Engine, issued_id: str) -> None:
    draft = insert_draft(engine, "in_draft_feb", 2)
    assert get_invoice(engine, draft)["number"] is None

    out = issue_invoice(engine, draft, now=NOW, actor="alice", reason="reviewed")

    assert out["status"] == "issued"
    assert out["number"] == "ACME-2026-000002"  # the close took 000001
    assert out["issued_at"] == "2026-03-05T09:30:00Z"
    assert out["due_at"] == "2026-04-04T09:30:00Z"  # default payment terms: 30 days
    assert out["status_history"] == [
        {"from": "draft", "to": "issued", "at": "2026-03-05T09:30:00Z", "reason": "reviewed", "actor": "alice"}
    ]
    assert out == get_invoice(engine, draft)


def test_paid_path_appends_history_in_order(engine: Engine, issued_id: str) -> None:
    later = NOW + timedelta(days=40)
    mark_uncollectible(engine, issued_id, now=NOW, actor="dunning", reason="90 days overdue")
    out = mark_paid(engine, issued_id, now=later, actor="bank", reason="wire received")

    assert out["status"] == "paid"
    assert [(h["from"], h["to"]) for h in out["status_history"]] == [
        (None, "issued"),
        ("issued", "uncollectible"),
        ("uncollectible", "paid"),
    ]
    assert history_rows(engine, issued_id) == [
        (1, None, "issued", "close", "period closed"),
        (2, "issued", "uncollectible", "dunning", "90 days overdue"),
        (3, "uncollectible", "paid", "bank", "wire received"),
    ]
    assert out["status_history"][-1]["at"] == "2026-04-14T09:30:00Z"


def test_void_keeps_number_amounts_and_lines(engine: Engine, issued_id: str) -> None:
    before = get_invoice(engine, issued_id)
    out = void_invoice(engine, issued_id, now=NOW, actor="alice", reason="duplicate")

    assert out["status"] == "void"
    unchanged = {k: v for k, v in out.items() if k not in {"status", "status_history"}}
    assert unchanged == {k: v for k, v in before.items() if k not in {"status", "status_history"}}


def test_a_draft_can_be_voided_without_taking_a_number(engine: Engine, issued_id: str) -> None:
    draft = insert_draft(engine, "in_draft_feb", 2)
    out = void_invoice(engine, draft, now=NOW, actor="alice", reason="created by mistake")
    assert out["status"] == "void" and out["number"] is None and out["issued_at"] is None
    nxt = issue_invoice(engine, insert_draft(engine, "in_draft_mar", 3), now=NOW, actor="a", reason="r")
    assert nxt["number"] == "ACME-2026-000002"


# --- illegal transitions and bad input ----------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "command", "message"),
    [
        ([], issue_invoice, "is issued; only draft invoices can be issued"),
        ([mark_paid], void_invoice, "is paid; only draft, issued or uncollectible invoices can be voided"),
        ([mark_paid], mark_uncollectible, "is paid; only issued invoices can be marked uncollectible"),
        ([void_invoice], mark_paid, "is void; only issued or uncollectible invoices can be marked paid"),
        (
            [mark_uncollectible],
            mark_uncollectible,
            "is uncollectible; only issued invoices can be marked uncollectible",
        ),
    ],
)
def test_illegal_moves_raise_and_change_nothing(
    engine: Engine, issued_id: str, setup: list[Command], command: Command, message: str
) -> None:
    for step in setup:
        step(engine, issued_id, now=NOW, actor="setup", reason="setup")
    before = get_invoice(engine, issued_id)
    with pytest.raises(IllegalTransition, match=f"^invoice {before['number']} {message}$") as caught:
        command(engine, issued_id, now=NOW + timedelta(days=1), actor="mallory", reason="try")
    assert caught.value.code == "illegal_transition"
    assert get_invoice(engine, issued_id) == before


def test_a_draft_cannot_be_paid(engine: Engine, issued_id: str) -> None:
    draft = insert_draft(engine, "in_draft_feb", 2)
    with pytest.raises(IllegalTransition, match="is draft; only issued or uncollectible invoices can be marked paid"):
        mark_paid(engine, draft, now=NOW, actor="a", reason="r")
    assert get_invoice(engine, draft)["status_history"] == []


def test_unknown_invoice(engine: Engine) -> None:
    with pytest.raises(InvoiceNotFound) as caught:
        mark_paid(engine, "in_nope", now=NOW, actor="a", reason="r")
    assert caught.value.code == "invoice_not_found"
    assert isinstance(caught.value, LookupError) and isinstance(caught.value, ValoraError)
    with pytest.raises(InvoiceNotFound, match="in_nope"):
        get_invoice(engine, "in_nope")


def test_invoice_parties_are_the_catalog_names(engine: Engine, issued_id: str) -> None:
    assert invoice_parties(engine, issued_id) == ("Acme Inc", "Globex")
    with pytest.raises(InvoiceNotFound):
        invoice_parties(engine, "in_nope")


def test_a_naive_time_is_refused(engine: Engine, issued_id: str) -> None:
    with pytest.raises(InvalidInput, match="timezone"):
        mark_paid(engine, issued_id, now=datetime(2026, 3, 5), actor="a", reason="r")
    assert get_invoice(engine, issued_id)["status"] == "issued"


# --- concurrency --------------------------------------------------------------------------


def _race(engine: Engine, invoice_id: str, commands: list[Command]) -> list[object]:
    """Run the commands in threads released together; each result or exception, in order."""
    return race(
        [
            lambda i=i, command=command: command(engine, invoice_id, now=NOW, actor=f"worker-{i}", reason="race")
            for i, command in enumerate(commands)
        ]
    )


@pytest.mark.parametrize("round_", range(5))
def test_racing_payments_one_wins(engine: Engine, issued_id: str, round_: int) -> None:
    results = _race(engine, issued_id, [mark_paid, mark_paid])

    winners = [r for r in results if isinstance(r, dict)]
    losers = [r for r in results if isinstance(r, Exception)]
    assert len(winners) == 1, results
    # The loser either read "issued" and lost the compare-and-set, or read "paid" and was refused.
    assert len(losers) == 1 and isinstance(losers[0], ConcurrentUpdate | IllegalTransition), losers
    assert [row[1:3] for row in history_rows(engine, issued_id)] == [(None, "issued"), ("issued", "paid")]


def _waiting_on_a_lock(engine: Engine) -> bool:
    with engine.connect() as conn:
        waiting = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalar_one()
    return bool(waiting)


def _lose_race(engine: Engine, invoice_id: str, command: Command, competing_sql: str) -> object:
    """Force the interleaving: `command` reads the invoice, then `competing_sql` commits before its UPDATE.

    The competing transaction holds the row lock, so the command's compare-and-set blocks; once the
    competitor commits, Postgres re-checks `status = :expected` against the new row and updates nothing.
    """
    other = engine.connect()
    tx = other.begin()
    other.execute(text(competing_sql), {"id": invoice_id})
    outcome: list[object] = []
    worker = threading.Thread(
        target=lambda: outcome.append(_capture(lambda: command(engine, invoice_id, now=NOW, actor="a", reason="r")))
    )
    worker.start()
    try:
        wait_for(lambda: _waiting_on_a_lock(engine), timeout_s=20, message="the command never blocked on the row")
    finally:
        tx.commit()
        other.close()
        worker.join(timeout=30)
    assert len(outcome) == 1
    return outcome[0]


def test_compare_and_set_loses_to_a_write_after_the_read(engine: Engine, issued_id: str) -> None:
    lost = _lose_race(engine, issued_id, mark_paid, "UPDATE invoices SET status = 'void' WHERE id = :id")

    assert isinstance(lost, ConcurrentUpdate), lost
    assert lost.code == "concurrent_update"
    assert get_invoice(engine, issued_id)["status"] == "void"
    assert len(history_rows(engine, issued_id)) == 1  # the loser wrote nothing


def test_an_issue_that_loses_the_race_gives_its_number_back(engine: Engine, issued_id: str) -> None:
    draft = insert_draft(engine, "in_draft_feb", 2)
    competitor = "UPDATE invoices SET status = 'issued', number = 'MANUAL-1', issued_at = now() WHERE id = :id"
    lost = _lose_race(engine, draft, issue_invoice, competitor)

    assert isinstance(lost, ConcurrentUpdate), lost
    assert get_invoice(engine, draft)["number"] == "MANUAL-1"
    with Session(engine) as session:  # the loser had bumped the sequence; the rollback took it back
        assert session.scalar(select(m.InvoiceSequence.last_number).where(m.InvoiceSequence.year == 2026)) == 1


def _capture(call: Callable[[], object]) -> object:
    try:
        return call()
    except Exception as exc:
        return exc


# --- numbering ----------------------------------------------------------------------------


def test_numbering_is_gapless_across_issues_failures_and_races(engine: Engine, issued_id: str) -> None:
    drafts = [insert_draft(engine, f"in_draft_{month:02d}", month) for month in range(2, 8)]

    numbers = [issue_invoice(engine, drafts[0], now=NOW, actor="a", reason="r")["number"]]
    with pytest.raises(IllegalTransition):  # a refused issue must not burn a number
        issue_invoice(engine, drafts[0], now=NOW, actor="a", reason="again")
    numbers.append(issue_invoice(engine, drafts[2], now=NOW, actor="a", reason="r")["number"])
    # Two issuers race for the same draft: the loser's number is rolled back with it.
    raced = _race(engine, drafts[3], [issue_invoice, issue_invoice])
    numbers += [r["number"] for r in raced if isinstance(r, dict)]
    numbers.append(issue_invoice(engine, drafts[4], now=NOW, actor="a", reason="r")["number"])

    assert numbers == [f"ACME-2026-{n:06d}" for n in range(2, 6)]
    with Session(engine) as session:
        assert session.scalar(select(m.InvoiceSequence.last_number).where(m.InvoiceSequence.year == 2026)) == 5
        assert session.scalar(select(func.count()).where(m.Invoice.status == "draft")) == 2  # drafts[1], drafts[5]

    next_year = issue_invoice(engine, drafts[5], now=datetime(2027, 1, 2, tzinfo=UTC), actor="a", reason="r")
    assert next_year["number"] == "ACME-2027-000001"
