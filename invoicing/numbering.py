"""Gapless invoice numbers: PREFIX-YEAR-000001, per organization and year.

Numbers come from `invoice_sequences`, bumped in the same transaction that issues the
invoices: the row lock orders concurrent issuers, and a rolled-back transaction takes
its bump back with it, so no number is ever skipped or used twice.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import text
from sqlalchemy.orm import Session


def reserve_numbers(session: Session, counts: Mapping[str, int], year: int) -> dict[str, int]:
    """Reserve `counts[org]` consecutive numbers per organization; returns the first of each."""
    org_ids = sorted(counts)
    if not org_ids:
        return {}
    rows = session.execute(
        text(
            "INSERT INTO invoice_sequences AS q (organization_id, year, last_number) "
            "SELECT o, :year, n FROM unnest(CAST(:orgs AS text[]), CAST(:counts AS bigint[])) AS u(o, n) "
            "ON CONFLICT (organization_id, year) DO UPDATE SET last_number = q.last_number + excluded.last_number "
            "RETURNING organization_id, last_number"
        ),
        {"year": year, "orgs": org_ids, "counts": [counts[o] for o in org_ids]},
    ).all()
    return {org: last - counts[org] + 1 for org, last in rows}


def format_number(prefix: str, year: int, number: int) -> str:
    return f"{prefix}-{year}-{number:06d}"
