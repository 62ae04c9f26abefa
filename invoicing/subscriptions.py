"""Subscription lifecycle commands: cancel now, schedule or revoke a cancel, dunning, trials.

The transition table lives in `invoicing.lifecycle`; this module persists it. A one-off
command (`cancel_now`, `schedule_cancel`, `revoke_cancel`) runs in one transaction:

1. read the subscription (unknown → `SubscriptionNotFound`);
2. validate the move with the pure `advance_subscription` (illegal → `IllegalTransition`;
   before `start_at` a subscription is "not started", where no cancel is legal);
3. write it with a compare-and-set `UPDATE ... WHERE status = :expected AND
   cancel_at_period_end = :expected AND <the cursor and end_at as read>`; no row updated
   means the close or another command moved it meanwhile (→ `ConcurrentUpdate`, nothing
   written; re-read and retry);
4. append to `subscription_status_history` (seq = previous max + 1; the CAS holds the row
   lock), with the caller's actor and reason.

The batch jobs the scheduler runs (`end_trials`, `mark_overdue`, `reactivate_paid`) claim
rows with `FOR UPDATE SKIP LOCKED` in batches, validate each move with the same table, and
write them with the same compare-and-set, set-based.

What each move does to the billing columns:

* `cancel_now`: status canceled, `end_at = now` (or the earlier end already set),
  `canceled_at = now`; the cursor's period becomes due at `end_at`, so the close issues the
  final, prorated invoice as soon as the late grace has passed, and moves canceled → ended.
  If no period is left to invoice the subscription ends at once (a second history row).
  Back-dated before periods already invoiced, it also credits their flat fees for the time
  after `end_at` (`invoicing.cancel_credits`); the JSON then lists `credit_notes_issued`.
* `schedule_cancel`: flag set, `end_at` = the end of the period containing `now` (or the
  earlier end already set); during a trial, the trial's end, as the table ends a trial with
  a scheduled cancel at `trial_end`. `canceled_at = now` records when it was asked for.
* `revoke_cancel`: flag cleared, `end_at` and `canceled_at` cleared, the cursor due at its
  period's end again. Refused once `end_at` has passed: the period already ended.
* `mark_overdue`: an active subscription with an issued, unpaid, non-zero invoice whose
  `due_at < now` becomes past_due; the history reason names the invoice. Trialing ones are
  left alone: the table makes dunning illegal during a trial.
* `reactivate_paid`: a past_due subscription with no such invoice left becomes active.
* `end_trials`: a trialing subscription whose `trial_end <= now` becomes active (ended if a
  cancel was scheduled).

A fixed term from the catalog (`end`) bounds billing but is not a lifecycle move: the table
has no move from a live status straight to ended, so such a subscription keeps its status
after its last invoice. `revoke_cancel` clears `end_at`; a catalog `end` it replaced comes
back on the next `valora catalog apply`.

The clock is injected (`now`), never read here.

Errors:

    ValoraError
    ├── InvalidInput (ValueError)                 code "invalid_input"  (a `now` without a timezone)
    ├── IllegalTransition (invoicing.lifecycle)   code "illegal_transition"
    ├── ConcurrentUpdate (invoicing.commands)     code "concurrent_update"
    └── SubscriptionNotFound (LookupError)        code "subscription_not_found"
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.orm import Session

from invoicing import models as m
from invoicing.cancel_credits import credit_time_after
from invoicing.commands import ConcurrentUpdate
from invoicing.lifecycle import (
    SUBSCRIPTION_TRANSITIONS,
    IllegalTransition,
    SubscriptionAction,
    SubscriptionState,
    SubscriptionStatus,
    advance_subscription,
    require_aware,
)
from invoicing.queries import rfc3339
from rating.periods import period_containing
from schemas.errors import ValoraError
from schemas.plans import Plan, load_plan

_A = SubscriptionAction


class SubscriptionNotFound(ValoraError, LookupError):
    """No subscription has this (organization, id)."""

    code = "subscription_not_found"


# --- shared with the close -----------------------------------------------------------------


def state_of(sub: m.Subscription) -> SubscriptionState:
    """The lifecycle state a stored subscription is in."""
    return SubscriptionState(SubscriptionStatus(sub.status), sub.cancel_at_period_end)


def cursor_due_at(sub: m.Subscription, plan: Plan, end_at: datetime | None) -> datetime | None:
    """When the close's cursor period (starting at `next_period_start`) is due, given `end_at`.

    The period's end, or `end_at` when the subscription ends inside the period, so a final
    invoice need not wait for the period's end. None: no period is left to invoice.
    """
    if end_at is not None and sub.next_period_start >= end_at:
        return None
    if sub.opening_pending:  # the opening invoice comes first: due when the paid time starts
        return paid_from(sub) if end_at is None else min(paid_from(sub), end_at)
    period = period_containing(sub.billing_anchor, plan.interval, sub.next_period_start, plan.interval_count)
    return period.end if end_at is None else min(period.end, end_at)


def paid_from(sub: m.Subscription) -> datetime:
    """Where flat charges start: the subscription's start, or its trial's end (a trial pays no flat fee)."""
    return sub.start_at if sub.trial_end is None else max(sub.start_at, sub.trial_end)


def record_period_end(session: Session, finished: Sequence[tuple[m.Subscription, str]], at: datetime) -> None:
    """Apply `period_end_reached` to subscriptions whose last period the close just handled.

    A canceled subscription, or one with a cancel scheduled, becomes ended (with a history
    row: actor "close", the given reason); any other state has nothing to do here. The
    caller holds each row's lock, so the history's next seq is ours.
    """
    for sub, reason in finished:
        current = state_of(sub)
        target = SUBSCRIPTION_TRANSITIONS.get((current, _A.PERIOD_END_REACHED))
        if target is None or target == current:
            continue
        sub.status, sub.cancel_at_period_end = target.status.value, target.cancel_at_period_end
        session.flush()
        _append_history(session, sub, current, target, at=at, actor="close", reason=reason)


# --- one-off commands -------------------------------------------------------------------------


def cancel_now(engine: Engine, org: str, sub_id: str, *, now: datetime, actor: str, reason: str) -> dict[str, Any]:
    """End access at `now`: status canceled; the close then issues the final, prorated invoice.

    Raises:
        SubscriptionNotFound: unknown subscription.
        IllegalTransition: already canceled or ended, or not started yet.
        ConcurrentUpdate: the close or another command moved it first.
        InvalidInput: `now` has no timezone.
    """

    billed: list[tuple[datetime, datetime | None]] = []  # flat fees were billed for [paid from, old end)

    def change(sub: m.Subscription, plan: Plan, at: datetime) -> dict[str, Any]:
        billed.append((paid_from(sub), sub.end_at))
        end = at if sub.end_at is None else min(sub.end_at, at)
        return {"end_at": end, "canceled_at": at} | _cursor(sub, plan, end)

    def credit_invoiced_time(session: Session, sub: m.Subscription) -> dict[str, Any]:
        # Back-dated over invoiced periods: no final invoice will settle them, so credit notes do.
        if sub.end_at is None or sub.end_at >= sub.next_period_start:
            return {}
        if sub.advance_billed_until is not None and sub.advance_billed_until > sub.end_at:
            sub.advance_billed_until = sub.end_at
        numbers = credit_time_after(session, sub, sub.end_at, billed[0], now=now.astimezone(UTC), actor=actor)
        return {"credit_notes_issued": numbers} if numbers else {}

    return _apply(
        engine,
        org,
        sub_id,
        _A.CANCEL_NOW,
        now=now,
        actor=actor,
        reason=reason,
        change=change,
        after=credit_invoiced_time,
    )


def schedule_cancel(engine: Engine, org: str, sub_id: str, *, now: datetime, actor: str, reason: str) -> dict[str, Any]:
    """End the subscription at the end of the current period (of the trial, during a trial).

    Raises:
        SubscriptionNotFound: unknown subscription.
        IllegalTransition: a cancel is already scheduled, it is canceled or ended, not started
            yet, or its trial has ended but the trials job has not converted it yet.
        ConcurrentUpdate: the close or another command moved it first.
        InvalidInput: `now` has no timezone.
    """

    def change(sub: m.Subscription, plan: Plan, at: datetime) -> dict[str, Any]:
        if sub.status == SubscriptionStatus.TRIALING and sub.trial_end is not None:
            if sub.trial_end <= at:
                state = f"trialing, trial ended at {rfc3339(sub.trial_end)}"
                raise IllegalTransition(_subject(sub), state, _A.SCHEDULE_CANCEL)
            end = sub.trial_end
        else:
            end = period_containing(sub.billing_anchor, plan.interval, at, plan.interval_count).end
        if sub.end_at is not None:
            end = min(end, sub.end_at)
        return {"end_at": end, "canceled_at": at} | _cursor(sub, plan, end)

    return _apply(engine, org, sub_id, _A.SCHEDULE_CANCEL, now=now, actor=actor, reason=reason, change=change)


def revoke_cancel(engine: Engine, org: str, sub_id: str, *, now: datetime, actor: str, reason: str) -> dict[str, Any]:
    """Keep renewing: clear a scheduled cancel, as long as its period has not ended yet.

    Raises:
        SubscriptionNotFound: unknown subscription.
        IllegalTransition: no cancel is scheduled, or its end has already passed.
        ConcurrentUpdate: the close or another command moved it first.
        InvalidInput: `now` has no timezone.
    """

    def change(sub: m.Subscription, plan: Plan, at: datetime) -> dict[str, Any]:
        if sub.end_at is not None and sub.end_at <= at:
            raise IllegalTransition(_subject(sub), f"{state_of(sub)}, ended at {rfc3339(sub.end_at)}", _A.REVOKE_CANCEL)
        return {"end_at": None, "canceled_at": None} | _cursor(sub, plan, None)

    return _apply(engine, org, sub_id, _A.REVOKE_CANCEL, now=now, actor=actor, reason=reason, change=change)


def get_subscription(engine: Engine, org: str, sub_id: str) -> dict[str, Any]:
    """One subscription in its public JSON shape, with its status history.

    Raises:
        SubscriptionNotFound: unknown subscription.
    """
    with Session(engine) as session:
        return _subscription_json(session, _load(session, org, sub_id))


_Change = Callable[[m.Subscription, Plan, datetime], dict[str, Any]]


def _apply(
    engine: Engine,
    org: str,
    sub_id: str,
    action: SubscriptionAction,
    *,
    now: datetime,
    actor: str,
    reason: str,
    change: _Change,
    after: Callable[[Session, m.Subscription], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Validate and persist one move in one transaction (see the module docstring).

    `after`, when given, runs in the same transaction once the move is written; what it
    returns is added to the subscription's JSON.
    """
    require_aware(now)
    now = now.astimezone(UTC)
    with Session(engine) as session, session.begin():
        sub = _load(session, org, sub_id)
        current = state_of(sub)
        if now < sub.start_at:
            raise IllegalTransition(_subject(sub), f"not started (starts {rfc3339(sub.start_at)})", action)
        target = advance_subscription(current, action, subject=_subject(sub))
        values = change(sub, load_plan(session.get_one(m.Plan, (org, sub.plan_code)).spec), now)
        values |= {"status": target.status.value, "cancel_at_period_end": target.cancel_at_period_end}
        _compare_and_set(session, sub, current, values, action)
        session.refresh(sub)
        _append_history(session, sub, current, target, at=now, actor=actor, reason=_reason(action, sub, reason))
        extra = after(session, sub) if after is not None else {}
        if sub.next_close_at is None:  # nothing left to invoice: the period end is already behind it
            record_period_end(session, [(sub, "no period left to invoice")], now)
        return _subscription_json(session, sub) | extra


def _cursor(sub: m.Subscription, plan: Plan, end_at: datetime | None) -> dict[str, Any]:
    """The cursor's due time under a new `end_at`; a finished cursor stays finished."""
    return {"next_close_at": None if sub.next_close_at is None else cursor_due_at(sub, plan, end_at)}


def _compare_and_set(
    session: Session,
    sub: m.Subscription,
    current: SubscriptionState,
    values: dict[str, Any],
    action: SubscriptionAction,
) -> None:
    """Write `values` only if the row still holds what the move was computed from.

    Raises:
        ConcurrentUpdate: it does not; nothing was written.
    """
    s = m.Subscription
    moved = session.execute(
        update(s)
        .where(
            s.organization_id == sub.organization_id,
            s.id == sub.id,
            s.status == current.status.value,
            s.cancel_at_period_end == current.cancel_at_period_end,
            s.next_period_start == sub.next_period_start,
            s.next_close_at.is_not_distinct_from(sub.next_close_at),
            s.end_at.is_not_distinct_from(sub.end_at),
        )
        .values(**values)
        .returning(s.id)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if moved is None:
        raise ConcurrentUpdate(
            f"{_subject(sub)} is no longer {current} as read: another change won the race to {action}; "
            "re-read it and retry"
        )


def _reason(action: SubscriptionAction, sub: m.Subscription, reason: str) -> str:
    """The history reason; a scheduled cancel and its revocation keep the status, so say which it was."""
    if action is _A.SCHEDULE_CANCEL:
        return f"cancel scheduled for {rfc3339(sub.end_at)}: {reason}"
    if action is _A.REVOKE_CANCEL:
        return f"scheduled cancel revoked: {reason}"
    return reason


def _load(session: Session, org: str, sub_id: str) -> m.Subscription:
    """The subscription as stored now (bypassing anything the session cached).

    Raises:
        SubscriptionNotFound: unknown subscription.
    """
    sub = session.get(m.Subscription, (org, sub_id), populate_existing=True)
    if sub is None:
        raise SubscriptionNotFound(f"no subscription {sub_id!r} in organization {org!r}")
    return sub


def _append_history(
    session: Session,
    sub: m.Subscription,
    current: SubscriptionState,
    target: SubscriptionState,
    *,
    at: datetime,
    actor: str,
    reason: str,
) -> None:
    """Add the next history row; the caller holds the subscription's row lock, so seq is ours."""
    h = m.SubscriptionStatusChange
    last = session.scalar(
        select(func.coalesce(func.max(h.seq), 0)).where(
            h.organization_id == sub.organization_id, h.subscription_id == sub.id
        )
    )
    session.execute(
        insert(h).values(
            organization_id=sub.organization_id,
            subscription_id=sub.id,
            seq=int(last or 0) + 1,
            from_status=current.status.value,
            to_status=target.status.value,
            at=at,
            reason=reason,
            actor=actor,
        )
    )


def _subscription_json(session: Session, sub: m.Subscription) -> dict[str, Any]:
    """One subscription in its public JSON shape: stable keys, history in seq order."""
    h = m.SubscriptionStatusChange
    history = session.scalars(
        select(h)
        .where(h.organization_id == sub.organization_id, h.subscription_id == sub.id)
        .order_by(h.seq)
        .execution_options(populate_existing=True)
    )
    return {
        "organization": sub.organization_id,
        "id": sub.id,
        "customer": sub.customer_id,
        "plan": sub.plan_code,
        "status": sub.status,
        "cancel_at_period_end": sub.cancel_at_period_end,
        "start_at": rfc3339(sub.start_at),
        "billing_anchor": rfc3339(sub.billing_anchor),
        "trial_end": rfc3339(sub.trial_end),
        "end_at": rfc3339(sub.end_at),
        "canceled_at": rfc3339(sub.canceled_at),
        "next_period_start": rfc3339(sub.next_period_start),
        "next_close_at": rfc3339(sub.next_close_at),
        "status_history": [
            {
                "seq": c.seq,
                "from": c.from_status,
                "to": c.to_status,
                "at": rfc3339(c.at),
                "reason": c.reason,
                "actor": c.actor,
            }
            for c in history
        ],
        # "plan" is the plan the subscription started on; each change is in force from its effective_at.
        "plan_changes": [
            {
                "effective_at": rfc3339(pc.effective_at),
                "from": pc.from_plan,
                "to": pc.to_plan,
                "requested_at": rfc3339(pc.requested_at),
                "reason": pc.reason,
                "actor": pc.actor,
            }
            for pc in session.scalars(
                select(m.PlanChange)
                .where(m.PlanChange.organization_id == sub.organization_id, m.PlanChange.subscription_id == sub.id)
                .order_by(m.PlanChange.effective_at)
            )
        ],
    }


def _subject(sub: m.Subscription) -> str:
    return f"subscription {sub.organization_id}/{sub.id}"
