"""`valora invoices reissue`: void, then a new invoice for the same period with a new number, linked."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine

from invoicing.commands import InvoiceHasCreditNotes, get_invoice, mark_paid
from invoicing.credit_notes import CreditAll, credit_invoice
from invoicing.lifecycle import IllegalTransition
from invoicing.reissue import reissue_invoice
from tests.invoicing.conftest import history_rows

pytestmark = pytest.mark.integration

AT = datetime(2026, 2, 3, 9, tzinfo=UTC)


def test_reissue_voids_and_issues_a_linked_copy_with_the_next_number(engine: Engine, issued_id: str) -> None:
    before = get_invoice(engine, issued_id)
    result = reissue_invoice(engine, issued_id, now=AT, actor="ops", reason="sent to the wrong address")
    voided, new = result["voided"], result["invoice"]
    assert voided["status"] == "void" and voided["number"] == before["number"] == "ACME-2026-000001"
    assert new["status"] == "issued" and new["number"] == "ACME-2026-000002"
    assert (new["billing_reason"], new["replaces"]) == ("reissue", issued_id)
    assert (new["period_start"], new["period_end"]) == (before["period_start"], before["period_end"])
    assert new["lines"] == before["lines"] and new["total_minor"] == before["total_minor"]
    assert new["issued_at"] == "2026-02-03T09:00:00Z"
    assert history_rows(engine, new["id"]) == [
        (1, None, "issued", "ops", "reissue of ACME-2026-000001: sent to the wrong address")
    ]
    assert history_rows(engine, issued_id)[-1][1:] == ("issued", "void", "ops", "reissued: sent to the wrong address")
    # The replacement can itself be reissued; the voided one cannot be reissued again.
    again = reissue_invoice(engine, new["id"], now=AT, actor="ops", reason="again")["invoice"]
    assert (again["number"], again["replaces"]) == ("ACME-2026-000003", new["id"])
    with pytest.raises(IllegalTransition):
        reissue_invoice(engine, issued_id, now=AT, actor="ops", reason="twice")


def test_paid_or_credited_invoices_are_not_reissued(engine: Engine, issued_id: str) -> None:
    credit_invoice(engine, issued_id, CreditAll(), reason="outage", actor="ops", now=AT)
    with pytest.raises(InvoiceHasCreditNotes):
        reissue_invoice(engine, issued_id, now=AT, actor="ops", reason="no")
    assert get_invoice(engine, issued_id)["status"] == "issued"
    mark_paid(engine, issued_id, now=AT, actor="ops", reason="paid")
    with pytest.raises(IllegalTransition):
        reissue_invoice(engine, issued_id, now=AT, actor="ops", reason="no")
