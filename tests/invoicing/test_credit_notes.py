"""Credit notes against a real Postgres: modes, caps, races, numbering, the invoice JSON, voids, dunning."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from invoicing import models as m
from invoicing.catalog import apply_catalog, parse_catalog
from invoicing.close import close_due
from invoicing.commands import (
    InvoiceHasCreditNotes,
    InvoiceNotFound,
    get_invoice,
    mark_paid,
    mark_uncollectible,
    void_invoice,
)
from invoicing.credit_notes import (
    CreditAll,
    CreditAmount,
    CreditLines,
    CreditNoteNotFound,
    CreditRequest,
    InvalidCreditAmount,
    InvoiceLineNotFound,
    InvoiceNotCreditable,
    OverCredit,
    credit_invoice,
    credit_note_id,
    get_credit_note,
)
from invoicing.db import make_engine, upgrade
from invoicing.queries import list_invoices
from invoicing.subscription_jobs import mark_overdue, reactivate_paid
from invoicing.subscriptions import get_subscription
from schemas.errors import InvalidInput
from tests.helpers import ISSUE_CATALOG, race
from tests.invoicing.conftest import CLOSE_AT
from tests.invoicing.test_commands import insert_draft

pytestmark = pytest.mark.integration

NOW = datetime(2026, 2, 10, 12, tzinfo=UTC)
WHO = {"actor": "alice", "reason": "service outage on Jan 20"}
# The January invoice of tests.helpers.ISSUE_CATALOG with 3,500 API calls: base 29.00 × 16/31 and 2,500 paid calls.
BASE, API, TOTAL = 1497, 500, 1997
INVOICE_KEYS = [
    "id", "number", "organization", "customer", "subscription", "status", "currency", "period_start", "period_end",
    "issued_at", "due_at", "lines", "subtotal_minor", "total_minor", "status_history",
    "credited_minor", "amount_due_minor", "credit_notes", "billing_reason",
]  # fmt: skip


def close_january(engine: Engine, calls: int = 3500) -> str:
    """Close sub_1's January with `calls` API calls; returns the issued invoice's id (ACME-2026-000001)."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO usage_totals (organization_id, subscription_id, meter_key, period_start, segment_start, "
                "period_end, quantity, event_count, closed) VALUES ('acme', 'sub_1', 'api_calls', '2026-01-01Z', "
                "'2026-01-01Z', '2026-02-01Z', "
                ":q, :q, false)"
            ),
            {"q": calls},
        )
    summary = close_due(engine, as_of=CLOSE_AT, grace=timedelta(hours=1), clock=lambda: CLOSE_AT)
    assert summary.invoices == 1
    return summary.invoice_ids[0]


@pytest.fixture
def invoice_id(engine: Engine) -> str:
    return close_january(engine)


def credit(engine: Engine, invoice: str, request: CreditRequest, **kwargs: Any) -> dict[str, Any]:
    return credit_invoice(engine, invoice, request, **({"now": NOW} | WHO | kwargs))


def counts(engine: Engine) -> tuple[int, int, int | None]:
    """(credit notes, credit note lines, last credit note number of 2026)."""
    with engine.connect() as conn:
        return (
            conn.execute(text("SELECT count(*) FROM credit_notes")).scalar_one(),
            conn.execute(text("SELECT count(*) FROM credit_note_lines")).scalar_one(),
            conn.execute(text("SELECT last_number FROM credit_note_sequences WHERE year = 2026")).scalar(),
        )


# --- the three modes ----------------------------------------------------------------------------


def test_the_fixture_invoice(engine: Engine, invoice_id: str) -> None:
    invoice = get_invoice(engine, invoice_id)
    assert [(line["line_key"], line["amount_minor"]) for line in invoice["lines"]] == [("base", BASE), ("api", API)]
    assert (invoice["total_minor"], invoice["credited_minor"], invoice["amount_due_minor"]) == (TOTAL, 0, TOTAL)
    assert list(invoice) == INVOICE_KEYS and invoice["credit_notes"] == []


def test_all_credits_every_line_and_nothing_is_left_due(engine: Engine, invoice_id: str) -> None:
    note = credit(engine, invoice_id, CreditAll())

    assert note["number"] == "ACME-CN-2026-000001"
    assert note["id"] == credit_note_id("acme", "ACME-CN-2026-000001")
    assert note["invoice"] == invoice_id and note["invoice_number"] == "ACME-2026-000001"
    assert [(line["line_key"], line["amount_minor"]) for line in note["lines"]] == [("base", BASE), ("api", API)]
    assert note["total_minor"] == TOTAL and note["after_payment"] is False
    assert (note["issued_at"], note["actor"], note["reason"]) == ("2026-02-10T12:00:00Z", "alice", WHO["reason"])
    invoice = get_invoice(engine, invoice_id)
    assert (invoice["status"], invoice["credited_minor"], invoice["amount_due_minor"]) == ("issued", TOTAL, 0)
    assert invoice["credit_notes"] == [
        {
            "number": "ACME-CN-2026-000001",
            "issued_at": "2026-02-10T12:00:00Z",
            "total_minor": TOTAL,
            "after_payment": False,
            "reason": WHO["reason"],
        }
    ]
    with pytest.raises(OverCredit, match="has nothing left to credit"):
        credit(engine, invoice_id, CreditAll())


def test_lines_credit_their_remainder_in_full(engine: Engine, invoice_id: str) -> None:
    note = credit(engine, invoice_id, CreditLines(("api",)))
    assert [(line["line_key"], line["description"], line["amount_minor"]) for line in note["lines"]] == [
        ("api", "api: 3,500 units (1,000 free) × 0.002", API)
    ]
    with pytest.raises(OverCredit, match=r"line 'api' of invoice .* has nothing left to credit"):
        credit(engine, invoice_id, CreditLines(("base", "api")))
    rest = credit(engine, invoice_id, CreditAll())
    assert [(line["line_key"], line["amount_minor"]) for line in rest["lines"]] == [("base", BASE)]
    assert get_invoice(engine, invoice_id)["amount_due_minor"] == 0


def test_an_amount_credits_exactly_and_all_then_takes_the_rest_in_line_order(engine: Engine, invoice_id: str) -> None:
    first = credit(engine, invoice_id, CreditAmount(Decimal("3.33")))
    assert [(line["line_key"], line["amount_minor"]) for line in first["lines"]] == [(None, 333)]
    assert get_invoice(engine, invoice_id)["amount_due_minor"] == TOTAL - 333

    # The amount belongs to no line, so both lines still show their whole amount as creditable...
    second = credit(engine, invoice_id, CreditLines(("base",)))
    assert second["total_minor"] == BASE and second["credited_before_minor"] == 333
    # ...but the invoice only has 1.67 left: --all gives the api line that, and --line api is refused.
    with pytest.raises(OverCredit, match=r"has 1\.67 USD left to credit .* cannot credit 5\.00 USD"):
        credit(engine, invoice_id, CreditLines(("api",)))
    third = credit(engine, invoice_id, CreditAll())
    assert [(line["line_key"], line["amount_minor"]) for line in third["lines"]] == [("api", 167)]
    invoice = get_invoice(engine, invoice_id)
    assert (invoice["credited_minor"], invoice["amount_due_minor"]) == (TOTAL, 0)
    assert [n["number"] for n in invoice["credit_notes"]] == [f"ACME-CN-2026-{n:06d}" for n in (1, 2, 3)]


# --- refused credits ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "error", "message"),
    [
        (CreditAmount(Decimal("19.98")), OverCredit, "has 19.97 USD left to credit .* cannot credit 19.98 USD"),
        (CreditAmount(Decimal("0")), InvalidCreditAmount, "greater than zero"),
        (CreditAmount(Decimal("1.005")), InvalidCreditAmount, "USD amounts have at most 2"),
        (CreditLines(("tokens",)), InvoiceLineNotFound, "has no line 'tokens' \\(lines: base, api\\)"),
        (CreditLines(("api", "api")), InvalidInput, "given twice"),
    ],
)
def test_a_refused_credit_writes_nothing_and_burns_no_number(
    engine: Engine, invoice_id: str, request_: CreditRequest, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        credit(engine, invoice_id, request_)
    assert counts(engine) == (0, 0, None)
    assert credit(engine, invoice_id, CreditAmount(Decimal("19.97")))["number"] == "ACME-CN-2026-000001"


@pytest.mark.parametrize("status", ["draft", "void", "uncollectible"])
def test_only_issued_or_paid_invoices_can_be_credited(engine: Engine, invoice_id: str, status: str) -> None:
    target = invoice_id
    if status == "draft":
        target = insert_draft(engine, "in_draft_feb", 2)
    elif status == "void":
        void_invoice(engine, invoice_id, now=NOW, actor="a", reason="duplicate")
    else:
        mark_uncollectible(engine, invoice_id, now=NOW, actor="a", reason="written off")
    with pytest.raises(InvoiceNotCreditable, match=f"^invoice {target} is {status}: only issued or paid") as caught:
        credit(engine, target, CreditAll())
    assert caught.value.code == "invoice_not_creditable"
    assert counts(engine) == (0, 0, None)


def test_a_paid_invoice_keeps_its_amount_due_and_the_credit_is_owed_back(engine: Engine, invoice_id: str) -> None:
    credit(engine, invoice_id, CreditAmount(Decimal("4.97")))
    mark_paid(engine, invoice_id, now=NOW + timedelta(days=1), actor="bank", reason="wire received")
    after = credit(engine, invoice_id, CreditLines(("api",)), now=NOW + timedelta(days=2))

    assert after["after_payment"] is True
    invoice = get_invoice(engine, invoice_id)
    assert invoice["status"] == "paid"
    assert (invoice["credited_minor"], invoice["amount_due_minor"]) == (497 + API, TOTAL - 497)
    assert [n["after_payment"] for n in invoice["credit_notes"]] == [False, True]


def test_unknown_invoice_other_organization_and_bad_arguments(engine: Engine, invoice_id: str) -> None:
    with pytest.raises(InvoiceNotFound, match="no invoice with id 'in_nope'"):
        credit(engine, "in_nope", CreditAll())
    with pytest.raises(InvoiceNotFound, match="in organization 'globex'"):
        credit(engine, invoice_id, CreditAll(), organization="globex")
    with pytest.raises(InvalidInput, match="needs a reason"):
        credit(engine, invoice_id, CreditAll(), reason="  ")
    with pytest.raises(InvalidInput, match="timezone"):
        credit(engine, invoice_id, CreditAll(), now=datetime(2026, 2, 10))
    assert counts(engine) == (0, 0, None)
    assert credit(engine, invoice_id, CreditAll(), organization="acme")["total_minor"] == TOTAL


# --- voids ------------------------------------------------------------------------------------------


def test_an_invoice_with_credit_notes_cannot_be_voided(engine: Engine, invoice_id: str) -> None:
    credit(engine, invoice_id, CreditAmount(Decimal("1.00")))
    with pytest.raises(InvoiceHasCreditNotes, match="has credit notes \\(ACME-CN-2026-000001\\): cannot void") as err:
        void_invoice(engine, invoice_id, now=NOW, actor="a", reason="duplicate")
    assert err.value.code == "invoice_has_credit_notes"
    invoice = get_invoice(engine, invoice_id)
    assert invoice["status"] == "issued" and len(invoice["status_history"]) == 1


# --- the database backs the caps ----------------------------------------------------------------------


def _raw_note(conn: Any, invoice_id: str, number: str, before: int, total: int, invoice_total: int = TOTAL) -> None:
    conn.execute(
        text(
            "INSERT INTO credit_notes (id, organization_id, invoice_id, number, currency, reason, actor, issued_at, "
            "after_payment, invoice_total_minor, credited_before_minor, total_minor) VALUES "
            "(:n, 'acme', :i, :n, 'USD', 'r', 'a', now(), false, :it, :b, :t)"
        ),
        {"n": number, "i": invoice_id, "it": invoice_total, "b": before, "t": total},
    )


@pytest.mark.parametrize(
    ("notes", "constraint"),
    [
        ([(0, TOTAL + 1)], "credit_note_within_invoice"),
        ([(0, 0)], "credit_note_positive"),
        ([(0, 1000), (0, 997)], "credit_note_chain"),  # two writers from the same balance
    ],
)
def test_the_database_refuses_an_over_credit_that_skipped_the_lock(
    engine: Engine, invoice_id: str, notes: list[tuple[int, int]], constraint: str
) -> None:
    with pytest.raises(IntegrityError, match=constraint), engine.begin() as conn:
        for i, (before, total) in enumerate(notes):
            _raw_note(conn, invoice_id, f"raw-{i}", before, total)


def test_the_database_refuses_a_line_credited_past_its_amount(engine: Engine, invoice_id: str) -> None:
    with pytest.raises(IntegrityError, match="credit_note_line_within_line"), engine.begin() as conn:
        _raw_note(conn, invoice_id, "raw", 0, API + 1)
        conn.execute(
            text(
                "INSERT INTO credit_note_lines (credit_note_id, position, invoice_id, line_key, description, "
                "amount_minor, line_amount_minor, line_credited_before_minor) VALUES ('raw', 1, :i, 'api', 'x', "
                ":a, :l, 0)"
            ),
            {"i": invoice_id, "a": API + 1, "l": API},
        )


# --- races --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_",
    [CreditAmount(Decimal("12.00")), CreditLines(("base",)), CreditAll()],
    ids=["amount", "line", "all"],
)
@pytest.mark.parametrize("round_", range(3))
def test_racing_credit_notes_never_over_credit(
    engine: Engine, invoice_id: str, request_: CreditRequest, round_: int
) -> None:
    results = race([lambda: credit(engine, invoice_id, request_) for _ in range(4)])

    winners = [r for r in results if isinstance(r, dict)]
    assert len(winners) == 1, results
    assert all(isinstance(r, OverCredit) for r in results if not isinstance(r, dict)), results
    invoice = get_invoice(engine, invoice_id)
    assert invoice["credited_minor"] == winners[0]["total_minor"] <= TOTAL
    assert counts(engine)[0::2] == (1, 1), "one credit note, and the losers gave their numbers back"


def test_racing_small_credits_all_fit_and_number_gaplessly(engine: Engine, invoice_id: str) -> None:
    results = race([lambda: credit(engine, invoice_id, CreditAmount(Decimal("1.00"))) for _ in range(6)])

    assert all(isinstance(r, dict) for r in results), results
    numbers = sorted(r["number"] for r in results if isinstance(r, dict))
    assert numbers == [f"ACME-CN-2026-{n:06d}" for n in range(1, 7)]
    assert get_invoice(engine, invoice_id)["credited_minor"] == 600


@pytest.mark.parametrize("round_", range(3))
def test_a_credit_note_and_a_void_racing_never_both_land(engine: Engine, invoice_id: str, round_: int) -> None:
    results = race(
        [
            lambda: credit(engine, invoice_id, CreditAmount(Decimal("1.00"))),
            lambda: void_invoice(engine, invoice_id, now=NOW, actor="a", reason="duplicate"),
        ]
    )
    invoice = get_invoice(engine, invoice_id)
    if invoice["status"] == "void":
        assert isinstance(results[0], InvoiceNotCreditable) and invoice["credit_notes"] == [], results
    else:
        assert isinstance(results[1], InvoiceHasCreditNotes) and len(invoice["credit_notes"]) == 1, results


# --- numbering ------------------------------------------------------------------------------------------


def test_credit_note_numbers_are_their_own_gapless_series_per_organization_and_year(
    engine: Engine, invoice_id: str
) -> None:
    numbers = [credit(engine, invoice_id, CreditAmount(Decimal("1.00")))["number"]]
    with pytest.raises(OverCredit):  # refused: no number taken
        credit(engine, invoice_id, CreditAmount(Decimal("100.00")))
    numbers.append(credit(engine, invoice_id, CreditAmount(Decimal("1.00")))["number"])
    next_year = datetime(2027, 1, 2, tzinfo=UTC)
    numbers.append(credit(engine, invoice_id, CreditAmount(Decimal("1.00")), now=next_year)["number"])

    assert numbers == ["ACME-CN-2026-000001", "ACME-CN-2026-000002", "ACME-CN-2027-000001"]
    with Session(engine) as session:  # the invoice series did not move
        assert session.scalar(select(m.InvoiceSequence.last_number).where(m.InvoiceSequence.year == 2026)) == 1
        assert session.scalar(select(m.CreditNoteSequence.last_number).where(m.CreditNoteSequence.year == 2026)) == 2


# --- reading ----------------------------------------------------------------------------------------------


def test_a_credit_note_is_found_by_number_or_id(engine: Engine, invoice_id: str) -> None:
    note = credit(engine, invoice_id, CreditLines(("api",)))
    assert get_credit_note(engine, note["number"]) == note == get_credit_note(engine, note["id"], organization="acme")
    assert list(note) == [
        "id", "number", "organization", "invoice", "invoice_number", "customer", "subscription", "currency",
        "issued_at", "reason", "actor", "after_payment", "lines", "total_minor", "invoice_total_minor",
        "credited_before_minor",
    ]  # fmt: skip
    with pytest.raises(CreditNoteNotFound, match="no credit note with number or id 'ACME-CN-2026-000009'") as err:
        get_credit_note(engine, "ACME-CN-2026-000009")
    assert err.value.code == "credit_note_not_found" and isinstance(err.value, LookupError)
    with pytest.raises(CreditNoteNotFound, match="in organization 'other'"):
        get_credit_note(engine, note["number"], organization="other")


def test_listed_invoices_carry_their_credits(engine: Engine, invoice_id: str) -> None:
    credit(engine, invoice_id, CreditAmount(Decimal("2.50")))
    [listed] = list_invoices(engine, "acme")
    assert listed == get_invoice(engine, invoice_id)
    assert list(listed) == INVOICE_KEYS
    assert (listed["credited_minor"], listed["amount_due_minor"]) == (250, TOTAL - 250)


# --- determinism ---------------------------------------------------------------------------------------------


@pytest.fixture
def twin_engine(pg_admin_url: str) -> Iterator[Engine]:
    """A second fresh database with the same catalog as `engine`."""
    name = f"valora_test_twin_{uuid.uuid4().hex[:12]}"
    admin = pg_admin_url.replace("+psycopg", "")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    eng = make_engine(pg_admin_url.rsplit("/", 1)[0] + f"/{name}")
    try:
        upgrade(eng)
        apply_catalog(eng, parse_catalog(ISSUE_CATALOG))
        yield eng
    finally:
        eng.dispose()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _credit_history(engine: Engine) -> str:
    invoice = close_january(engine)
    notes = [
        credit(engine, invoice, CreditAmount(Decimal("0.99"))),
        credit(engine, invoice, CreditLines(("api",)), now=NOW + timedelta(hours=1)),
    ]
    mark_paid(engine, invoice, now=NOW + timedelta(days=1), actor="bank", reason="wire")
    notes.append(credit(engine, invoice, CreditAll(), now=NOW + timedelta(days=2)))
    return json.dumps({"invoices": list_invoices(engine, "acme"), "credit_notes": notes}, indent=1)


def test_the_same_credits_give_byte_identical_json(engine: Engine, twin_engine: Engine) -> None:
    # Ids hash organization and number, and every time is the injected clock: nothing differs.
    assert _credit_history(engine) == _credit_history(twin_engine)


# --- dunning --------------------------------------------------------------------------------------------------

DUE = datetime(2026, 3, 3, 1, tzinfo=UTC)  # issued Feb 1 01:00 with 30 days' terms
LATER = DUE + timedelta(days=7)


def test_a_partly_credited_invoice_is_still_overdue(engine: Engine, invoice_id: str) -> None:
    credit(engine, invoice_id, CreditAmount(Decimal("19.96")))
    assert mark_overdue(engine, now=LATER) == 1, "0.01 is still due"
    assert get_subscription(engine, "acme", "sub_1")["status"] == "past_due"
    assert reactivate_paid(engine, now=LATER) == 0


def test_crediting_what_is_left_settles_an_overdue_invoice(engine: Engine, invoice_id: str) -> None:
    credit(engine, invoice_id, CreditLines(("base",)))
    assert mark_overdue(engine, now=LATER) == 1
    credit(engine, invoice_id, CreditAll(), now=LATER)
    assert reactivate_paid(engine, now=LATER) == 1
    sub = get_subscription(engine, "acme", "sub_1")
    assert sub["status"] == "active" and sub["status_history"][-1]["reason"] == "no overdue invoice left"
    assert get_invoice(engine, invoice_id)["status"] == "issued", "a credit is not a payment"


def test_an_invoice_credited_in_full_before_its_due_date_is_never_overdue(engine: Engine, invoice_id: str) -> None:
    credit(engine, invoice_id, CreditAll())
    assert mark_overdue(engine, now=LATER) == 0
    assert get_subscription(engine, "acme", "sub_1")["status"] == "active"
