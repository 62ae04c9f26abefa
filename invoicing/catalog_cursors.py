"""The close cursors of subscriptions a catalog changed: re-timed, or restarted when nothing is billed yet.

A subscription's cursor (`next_period_start`, `next_close_at`, `opening_pending`) is written
when the catalog creates it; after that the close and the lifecycle commands own it. A catalog
may still move what the cursor was computed from: `end` at any time (the period is then due at
the new end), and start, anchor or plan while nothing is invoiced or counted on the old grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from invoicing import models as m
from invoicing.catalog_guards import StoredSubscription
from invoicing.lifecycle import SubscriptionStatus
from invoicing.subscriptions import cursor_due_at
from schemas import catalog as c
from schemas.plans import Plan

_LIVE = (SubscriptionStatus.TRIALING, SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE)


def end_moved(sub: c.Subscription, before: dict[tuple[str, str], StoredSubscription]) -> bool:
    old = before.get((sub.organization, sub.id))
    return old is not None and old.end != sub.end


def regrid_unbilled(
    session: Session,
    subs: Sequence[c.Subscription],
    rows: list[dict[str, Any]],
    before: dict[tuple[str, str], StoredSubscription],
) -> None:
    """Restart the close cursor of live, never-billed subscriptions whose start, anchor or plan changed.

    Nothing is invoiced or counted on their old grid (`check_billed_history` refuses the change
    otherwise), so the cursor starts again where a new subscription's would.
    """
    moved = [
        row
        for sub, row in zip(subs, rows, strict=True)
        if (old := before.get((sub.organization, sub.id))) is not None
        and old.billed is None
        and (old.start, old.anchor, old.plan) != (row["start_at"], row["billing_anchor"], row["plan_code"])
    ]
    if not moved:
        return
    session.execute(
        text(
            "UPDATE subscriptions s SET next_period_start = u.nps, next_close_at = u.nca, opening_pending = u.op "
            "FROM unnest(CAST(:o AS text[]), CAST(:s AS text[]), CAST(:nps AS timestamptz[]), "
            "CAST(:nca AS timestamptz[]), CAST(:op AS boolean[])) AS u(o, s, nps, nca, op) "
            "WHERE s.organization_id = u.o AND s.id = u.s AND s.status = ANY(CAST(:live AS text[])) "
            "AND NOT s.cancel_at_period_end"
        ),
        {
            "o": [r["organization_id"] for r in moved],
            "s": [r["id"] for r in moved],
            "nps": [r["next_period_start"] for r in moved],
            "nca": [r["next_close_at"] for r in moved],
            "op": [r["opening_pending"] for r in moved],
            "live": [x.value for x in _LIVE],
        },
    )


def retime_cursors(session: Session, subs: Sequence[c.Subscription], plans: dict[tuple[str, str], Plan]) -> None:
    """Re-time the close cursor of live subscriptions whose `end` the catalog moved.

    The cursor's period is due at its end, or at `end_at` when that comes first; an `end`
    moved later (or dropped) must not leave the period due early, and one that no longer
    cuts a period short must not leave it due late. Rows a cancel owns are left alone.
    """
    rows = session.scalars(
        select(m.Subscription).from_statement(
            text(
                "SELECT s.* FROM subscriptions s JOIN unnest(CAST(:o AS text[]), CAST(:s AS text[])) AS u(o, s) "
                "ON s.organization_id = u.o AND s.id = u.s "
                "WHERE s.status = ANY(CAST(:live AS text[])) AND NOT s.cancel_at_period_end"
            )
        ),
        {"o": [x.organization for x in subs], "s": [x.id for x in subs], "live": [x.value for x in _LIVE]},
    )
    for sub in rows:
        due = cursor_due_at(sub, plans[(sub.organization_id, sub.plan_code)], sub.end_at)
        if due != sub.next_close_at:
            sub.next_close_at = due
