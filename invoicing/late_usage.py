"""Late usage on the next invoice: the adjustment lines for usage that arrived after its period closed.

The worker records each late contribution in `late_usage` with what folding it needs
(`rating.aggregation`); the close of a subscription's next period calls `late_lines_for`,
which folds the unbilled rows of each earlier period into what that period's invoices billed,
prices the difference with `invoicing.period_rating.late_lines`, and marks the rows billed on
the new invoice, all in the close's transaction.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

from sqlalchemy import text
from sqlalchemy.orm import Session

from invoicing.invoice_rows import BilledLine, ClosingItem
from invoicing.period_rating import PlanHistory, SubscriptionTerms, late_lines, segments
from rating import Period
from rating.aggregation import EMPTY, Total, billable, fold
from schemas.catalog import Aggregation


def late_lines_for(
    session: Session, items: list[ClosingItem], histories: dict[tuple[str, str], PlanHistory]
) -> dict[str, list[BilledLine]]:
    """Adjustment lines for usage that arrived after its period was invoiced, per invoice id.

    For each earlier period with unbilled late usage: fold the late events into the totals
    that period's invoices billed (its closed totals plus late usage billed before, through
    `rating.aggregation`), and bill what the period's rating says the difference is
    (`invoicing.period_rating.late_lines`). Late usage of a trial window whose plan does not
    bill trial usage stays unbilled.
    """
    by_sub = {(i.sub.organization_id, i.sub.id): i for i in items}
    rows = session.execute(
        text(
            "SELECT l.organization_id, l.subscription_id, l.period_start, l.period_end, l.segment_start, l.meter_key, "
            "l.dedup_key, l.aggregation, l.value, l.event_time, l.event_id, l.billed_invoice_id IS NOT NULL "
            "FROM late_usage l JOIN unnest(CAST(:o AS text[]), CAST(:s AS text[])) AS u(o, s) "
            "ON l.organization_id = u.o AND l.subscription_id = u.s "
            "WHERE (l.organization_id, l.subscription_id, l.period_start) IN (SELECT organization_id, subscription_id, "
            "period_start FROM late_usage WHERE billed_invoice_id IS NULL) FOR UPDATE OF l"
        ),
        {"o": [k[0] for k in by_sub], "s": [k[1] for k in by_sub]},
    ).all()
    periods: dict[tuple[str, str, datetime, datetime], list[LateRow]] = defaultdict(list)
    for row in rows:
        late = LateRow(*row[5:])
        periods[(row[0], row[1], row[2], row[3])].append(late._replace(segment=row[4]))
    out: dict[str, list[BilledLine]] = defaultdict(list)
    billing: list[tuple[str, str, str, str, str]] = []
    for (org, sub_id, ps, pe), late_rows in sorted(periods.items()):
        item, history = by_sub[(org, sub_id)], histories[(org, sub_id)]
        terms, period = SubscriptionTerms.of(item.sub), Period(ps, pe)
        billed_keys = {w.key for w in segments(terms, history, period) if w.usage_billed}
        new = [r for r in late_rows if not r.billed and r.segment in billed_keys]
        if not new:
            continue
        closed = _closed_totals(session, org, sub_id, ps)
        before = _fold_late(closed, [r for r in late_rows if r.billed])
        after = _fold_late(before, new)
        out[item.invoice_id] += late_lines(terms, history, period, _quantities(before), _quantities(after))
        billing += [(org, r.dedup_key, sub_id, r.meter, item.invoice_id) for r in new]
    if billing:
        cols = [list(col) for col in zip(*billing, strict=True)]
        session.execute(
            text(
                "UPDATE late_usage l SET billed_invoice_id = u.inv FROM unnest(CAST(:o AS text[]), CAST(:d AS text[]), "
                "CAST(:s AS text[]), CAST(:mk AS text[]), CAST(:inv AS text[])) AS u(o, d, s, mk, inv) "
                "WHERE l.organization_id = u.o AND l.dedup_key = u.d AND l.subscription_id = u.s AND l.meter_key = u.mk"
            ),
            {"o": cols[0], "d": cols[1], "s": cols[2], "mk": cols[3], "inv": cols[4]},
        )
    return out


class LateRow(NamedTuple):
    """One late event's contribution to one meter, as `late_usage` stores it."""

    meter: str
    dedup_key: str
    aggregation: str
    value: Decimal
    time: datetime
    event_id: str
    billed: bool
    segment: datetime | None = None


Totals = dict[tuple[datetime, str], Total]  # (segment key, meter) → the total so far


def _closed_totals(session: Session, org: str, sub: str, period_start: datetime) -> Totals:
    """The closed usage totals of one period, per (segment key, meter)."""
    result = session.execute(
        text(
            "SELECT segment_start, meter_key, quantity, event_count, latest_time, latest_event FROM usage_totals "
            "WHERE organization_id = :o AND subscription_id = :s AND period_start = :ps"
        ),
        {"o": org, "s": sub, "ps": period_start},
    )
    return {(seg, meter): Total(qty, count, ltime, levent) for seg, meter, qty, count, ltime, levent in result}


def _fold_late(totals: Totals, late: list[LateRow]) -> Totals:
    """`totals` with the late rows folded in, per (segment key, meter), by each meter's aggregation."""
    groups: dict[tuple[datetime, str], list[LateRow]] = defaultdict(list)
    for row in late:
        assert row.segment is not None
        groups[(row.segment, row.meter)].append(row)
    out = dict(totals)
    for key, rows in groups.items():
        aggregation = Aggregation(rows[0].aggregation)
        out[key] = fold(aggregation, rows, out.get(key, EMPTY))
    return out


def _quantities(totals: Totals) -> dict[datetime, dict[str, Decimal]]:
    usage: dict[datetime, dict[str, Decimal]] = defaultdict(dict)
    for (segment, meter), total in totals.items():
        usage[segment][meter] = billable(total)
    return usage
