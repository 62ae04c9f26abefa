"""Gapless document numbers per organization and year, one series per kind of document.

    invoices       PREFIX-YEAR-000001      counters in `invoice_sequences`
    credit notes   PREFIX-CN-YEAR-000001   counters in `credit_note_sequences`

Numbers come from the series' sequence table, bumped in the same transaction that issues
the documents: the row lock orders concurrent issuers, and a rolled-back transaction
takes its bump back with it, so no number is ever skipped or used twice. The series are
independent: a credit note never takes an invoice number, nor the other way round.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session


@dataclass(frozen=True, slots=True)
class NumberSeries:
    """One gapless series: the table holding its counters and the infix its numbers carry (if any)."""

    table: str
    infix: str | None = None


INVOICES = NumberSeries("invoice_sequences")
CREDIT_NOTES = NumberSeries("credit_note_sequences", "CN")


def reserve_numbers(
    session: Session, counts: Mapping[str, int], year: int, series: NumberSeries = INVOICES
) -> dict[str, int]:
    """Reserve `counts[org]` consecutive numbers per organization; returns the first of each."""
    org_ids = sorted(counts)
    if not org_ids:
        return {}
    rows = session.execute(
        text(
            f"INSERT INTO {series.table} AS q (organization_id, year, last_number) "
            "SELECT o, :year, n FROM unnest(CAST(:orgs AS text[]), CAST(:counts AS bigint[])) AS u(o, n) "
            "ON CONFLICT (organization_id, year) DO UPDATE SET last_number = q.last_number + excluded.last_number "
            "RETURNING organization_id, last_number"
        ),
        {"year": year, "orgs": org_ids, "counts": [counts[o] for o in org_ids]},
    ).all()
    return {org: last - counts[org] + 1 for org, last in rows}


def format_number(prefix: str, year: int, number: int, series: NumberSeries = INVOICES) -> str:
    """`ACME-2026-000042` for an invoice, `ACME-CN-2026-000042` for a credit note."""
    infix = f"{series.infix}-" if series.infix else ""
    return f"{prefix}-{infix}{year}-{number:06d}"
