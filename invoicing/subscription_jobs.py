"""The scheduler's subscription jobs: `trials` ends trials, `overdue` moves subscriptions
with an unpaid invoice past its due date to past_due and back to active once paid.

An invoice counts as unpaid while it is issued and its amount due after credit notes is
above zero: one whose credit notes cover its total (or a zero invoice) never makes a
subscription past due, and crediting the rest of an overdue invoice settles it like a payment.

Each job claims rows in batches with `FOR UPDATE SKIP LOCKED`, checks every move with
`advance_subscription`, and writes the status changes and history rows in bulk.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from invoicing.lifecycle import (
    SUBSCRIPTION_TRANSITIONS,
    SubscriptionAction,
    SubscriptionState,
    SubscriptionStatus,
    require_aware,
)

_A = SubscriptionAction


# An issued invoice past its due date with something left to pay. Every credit note of an issued
# invoice predates its payment, so all of them count (the sum uses credit_notes' (invoice_id, …) key).
_UNPAID_OVERDUE = (
    "i.status = 'issued' AND i.due_at < :now "
    "AND i.total_minor > coalesce((SELECT sum(c.total_minor) FROM credit_notes c WHERE c.invoice_id = i.id), 0)"
)
_OVERDUE = f"{_UNPAID_OVERDUE} AND i.organization_id = s.organization_id AND i.subscription_id = s.id"


def end_trials(
    engine: Engine,
    *,
    now: datetime,
    actor: str = "scheduler",
    limit: int = 1000,
    statement_timeout_ms: int | None = None,
) -> int:
    """Move every trialing subscription whose trial has ended (`trial_end <= now`); returns how many moved.

    A trial becomes active, or ended if a cancel was scheduled during it.
    """
    sql = (
        "SELECT s.organization_id, s.id, s.status, s.cancel_at_period_end, "
        "'trial ended at ' || to_char(s.trial_end AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
        "FROM subscriptions s WHERE s.status = 'trialing' AND s.trial_end <= :now "
        "ORDER BY s.trial_end LIMIT :limit FOR UPDATE OF s SKIP LOCKED"
    )
    return _run_batches(engine, sql, _A.TRIAL_END, now=now, actor=actor, limit=limit, timeout_ms=statement_timeout_ms)


def mark_overdue(
    engine: Engine,
    *,
    now: datetime,
    actor: str = "scheduler",
    limit: int = 1000,
    statement_timeout_ms: int | None = None,
) -> int:
    """Move active subscriptions with an overdue invoice (issued, amount due > 0, `due_at < now`) to past_due.

    Returns how many moved; the history reason names the oldest overdue invoice.
    """
    sql = (
        "SELECT s.organization_id, s.id, s.status, s.cancel_at_period_end, "
        "'invoice ' || coalesce(o.number, o.id) || ' overdue since ' || "
        "to_char(o.due_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
        "FROM subscriptions s CROSS JOIN LATERAL (SELECT i.id, i.number, i.due_at FROM invoices i "
        f"WHERE {_OVERDUE} ORDER BY i.due_at, i.id LIMIT 1) o "
        "WHERE s.status = 'active' AND (s.organization_id, s.id) IN (SELECT i.organization_id, i.subscription_id "
        f"FROM invoices i WHERE {_UNPAID_OVERDUE}) "
        "ORDER BY s.organization_id, s.id LIMIT :limit FOR UPDATE OF s SKIP LOCKED"
    )
    return _run_batches(
        engine, sql, _A.INVOICE_OVERDUE, now=now, actor=actor, limit=limit, timeout_ms=statement_timeout_ms
    )


def reactivate_paid(
    engine: Engine,
    *,
    now: datetime,
    actor: str = "scheduler",
    limit: int = 1000,
    statement_timeout_ms: int | None = None,
) -> int:
    """Move past_due subscriptions with no overdue invoice left (paid, or credited in full) back to active.

    Returns how many moved.
    """
    sql = (
        "SELECT s.organization_id, s.id, s.status, s.cancel_at_period_end, 'no overdue invoice left' "
        f"FROM subscriptions s WHERE s.status = 'past_due' AND NOT EXISTS (SELECT 1 FROM invoices i WHERE {_OVERDUE}) "
        "ORDER BY s.organization_id, s.id LIMIT :limit FOR UPDATE OF s SKIP LOCKED"
    )
    return _run_batches(
        engine, sql, _A.INVOICE_PAID, now=now, actor=actor, limit=limit, timeout_ms=statement_timeout_ms
    )


@dataclass(frozen=True, slots=True)
class _Move:
    organization_id: str
    id: str
    current: SubscriptionState
    target: SubscriptionState
    reason: str


def _run_batches(
    engine: Engine,
    claim_sql: str,
    action: SubscriptionAction,
    *,
    now: datetime,
    actor: str,
    limit: int,
    timeout_ms: int | None,
) -> int:
    """Claim rows with `claim_sql` and move them under `action`, one transaction per batch, until none is left.

    Rows another transaction holds are skipped (the next tick sees them); a row whose move
    the table forbids is left as it is.
    """
    require_aware(now)
    moved = 0
    while True:
        with Session(engine) as session, session.begin():
            if timeout_ms is not None:
                session.execute(text(f"SET LOCAL statement_timeout = {int(timeout_ms)}"))
            rows = session.execute(text(claim_sql), {"now": now, "limit": limit}).all()
            moves = []
            for org, sub_id, status, scheduled, reason in rows:
                current = SubscriptionState(SubscriptionStatus(status), scheduled)
                target = SUBSCRIPTION_TRANSITIONS.get((current, action))
                if target is not None and target != current:
                    moves.append(_Move(org, sub_id, current, target, reason))
            written = _move_many(session, moves, at=now, actor=actor)
        moved += written
        if len(rows) < limit or written == 0:  # a full batch that moved nothing would only be claimed again
            return moved


def _move_many(session: Session, moves: list[_Move], *, at: datetime, actor: str) -> int:
    """Compare-and-set each move and append its history row, set-based; returns how many were written."""
    if not moves:
        return 0
    cols = {
        "o": [mv.organization_id for mv in moves],
        "s": [mv.id for mv in moves],
        "fs": [mv.current.status.value for mv in moves],
        "ff": [mv.current.cancel_at_period_end for mv in moves],
        "ts": [mv.target.status.value for mv in moves],
        "tf": [mv.target.cancel_at_period_end for mv in moves],
        "r": [mv.reason for mv in moves],
    }
    result = session.execute(
        text(
            "WITH u AS (SELECT * FROM unnest(CAST(:o AS text[]), CAST(:s AS text[]), CAST(:fs AS text[]), "
            "CAST(:ff AS boolean[]), CAST(:ts AS text[]), CAST(:tf AS boolean[]), CAST(:r AS text[])) "
            "AS u(o, s, fs, ff, ts, tf, r)), "
            "moved AS (UPDATE subscriptions t SET status = u.ts, cancel_at_period_end = u.tf FROM u "
            "WHERE t.organization_id = u.o AND t.id = u.s AND t.status = u.fs AND t.cancel_at_period_end = u.ff "
            "RETURNING u.o, u.s, u.fs, u.ts, u.r) "
            "INSERT INTO subscription_status_history "
            "(organization_id, subscription_id, seq, from_status, to_status, at, reason, actor) "
            "SELECT moved.o, moved.s, coalesce((SELECT max(h.seq) FROM subscription_status_history h "
            "WHERE h.organization_id = moved.o AND h.subscription_id = moved.s), 0) + 1, "
            "moved.fs, moved.ts, :at, moved.r, :actor FROM moved"
        ),
        cols | {"at": at, "actor": actor},
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


# --- reading ----------------------------------------------------------------------------------
