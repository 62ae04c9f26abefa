"""Invoice and subscription lifecycles: states, transition tables and pure `advance` functions.

Nothing here touches the database or the clock. The persistence layer (`invoicing.commands`)
calls `advance_invoice` to validate a move and then writes it with a compare-and-set
`UPDATE ... WHERE status = :expected`, so the table below is the single source of truth for
what may happen to a status.

Invoice
-------

    state \\ action    issue     mark_paid   void   mark_uncollectible
    draft             issued       ·         void          ·
    issued              ·        paid        void     uncollectible
    uncollectible       ·        paid        void          ·
    paid (final)        ·          ·           ·            ·
    void (final)        ·          ·           ·            ·

    draft ──issue──▶ issued ──mark_paid──────────▶ paid
      │                │  └──mark_uncollectible──▶ uncollectible ──mark_paid (late payment)──▶ paid
      └──void──▶ void ◀┴───────────void──────────────────┘

Subscription
------------

A subscription's state is its status plus one flag, `cancel_at_period_end`, set by
`schedule_cancel` and cleared by `revoke_cancel`. `None` stands for "not started yet".
A `+` after a status means the flag is set; a cell names the resulting state.

    state          start      start_trl  trial_end  overdue    paid       cancel_now schedule   revoke     period_end
    (none)         active     trialing   ·          ·          ·          ·          ·          ·          ·
    trialing       ·          ·          active     ·          ·          canceled   trialing+  ·          ·
    trialing+      ·          ·          ended      ·          ·          canceled   ·          trialing   ·
    active         ·          ·          ·          past_due   active     canceled   active+    ·          active
    active+        ·          ·          ·          past_due+  active+    canceled   ·          active     ended
    past_due       ·          ·          ·          past_due   active     canceled   past_due+  ·          past_due
    past_due+      ·          ·          ·          past_due+  active+    canceled   ·          past_due   ended
    canceled       ·          ·          ·          ·          ·          ·          ·          ·          ended
    ended (final)  ·          ·          ·          ·          ·          ·          ·          ·          ·

    (columns: start, start_trial, trial_end, invoice_overdue, invoice_paid, cancel_now,
     schedule_cancel, revoke_cancel, period_end_reached)

Why these choices:

* `period_end_reached` on a live subscription without a scheduled cancel is a renewal and
  keeps the status (a past-due customer stays past due into the next period); with the flag
  set it ends the subscription. A trial is closed by `trial_end`, not by a period end, and a
  cancel scheduled during a trial takes effect at the trial's end (it never converts).
* `invoice_overdue` and `invoice_paid` describe the customer's dunning position: "some
  invoice is overdue" and "no overdue invoice is left". Both are legal in active and
  past_due so a payment listener need not know the current status first; they are illegal
  during a trial (nothing is due yet) and after cancellation (dunning no longer moves the
  subscription, though its invoices keep their own lifecycle).
* `cancel_now` ends access at once (status canceled) and clears the flag; the subscription
  becomes `ended` when its last period is closed.
* Scheduling a cancel twice, or revoking one that is not scheduled, is illegal rather than
  a silent no-op, like voiding a void invoice.

Errors:

    ValoraError
    └── IllegalTransition   code "illegal_transition"
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from schemas.errors import InvalidInput, ValoraError


class IllegalTransition(ValoraError):
    """An action that the current state does not allow; nothing was changed.

    The message says it in plain words: the object, its current state, and which states
    allow the action, e.g. "invoice ACME-2026-000003 is paid; only issued or uncollectible
    invoices can be marked paid" (the rules come from the transition tables below).
    """

    code = "illegal_transition"

    def __init__(self, subject: str, state: str, action: str) -> None:
        super().__init__(f"{subject} is {str(state).replace('_', ' ')}; {_rule(str(action))}")
        self.subject = subject
        self.state = state
        self.action = action


# --- invoices -----------------------------------------------------------------------------


class BillingReason(StrEnum):
    """Why an invoice exists (`invoices.billing_reason`)."""

    PERIOD = "period"  # a billing period's close
    OPENING = "opening"  # an in-advance subscription's first period, billed ahead
    REISSUE = "reissue"  # the replacement of a voided invoice, same period and lines, new number


class InvoiceStatus(StrEnum):
    DRAFT = "draft"
    ISSUED = "issued"
    PAID = "paid"
    VOID = "void"
    UNCOLLECTIBLE = "uncollectible"


class InvoiceAction(StrEnum):
    ISSUE = "issue"
    MARK_PAID = "mark_paid"
    VOID = "void"
    MARK_UNCOLLECTIBLE = "mark_uncollectible"


_I, _IA = InvoiceStatus, InvoiceAction

INVOICE_TRANSITIONS: dict[tuple[InvoiceStatus, InvoiceAction], InvoiceStatus] = {
    (_I.DRAFT, _IA.ISSUE): _I.ISSUED,
    (_I.DRAFT, _IA.VOID): _I.VOID,
    (_I.ISSUED, _IA.MARK_PAID): _I.PAID,
    (_I.ISSUED, _IA.VOID): _I.VOID,
    (_I.ISSUED, _IA.MARK_UNCOLLECTIBLE): _I.UNCOLLECTIBLE,
    (_I.UNCOLLECTIBLE, _IA.MARK_PAID): _I.PAID,  # a late payment after write-off
    (_I.UNCOLLECTIBLE, _IA.VOID): _I.VOID,
}
"""Every legal invoice move; anything not listed is illegal."""

FINAL_INVOICE_STATUSES: frozenset[InvoiceStatus] = frozenset(
    s for s in InvoiceStatus if not any(state == s for state, _ in INVOICE_TRANSITIONS)
)
"""States no action leaves: paid and void."""


def advance_invoice(status: InvoiceStatus, action: InvoiceAction, *, subject: str = "invoice") -> InvoiceStatus:
    """The status an invoice in `status` moves to under `action`.

    `subject` names the invoice in the error message (e.g. "invoice in_123").

    Raises:
        IllegalTransition: the table has no such move (e.g. paying a void invoice).
    """
    try:
        return INVOICE_TRANSITIONS[(status, action)]
    except KeyError:
        raise IllegalTransition(subject, str(status), str(action)) from None


# --- subscriptions ------------------------------------------------------------------------


class SubscriptionStatus(StrEnum):
    TRIALING = "trialing"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    CANCELED = "canceled"
    ENDED = "ended"


class SubscriptionAction(StrEnum):
    START = "start"
    START_TRIAL = "start_trial"
    TRIAL_END = "trial_end"
    INVOICE_OVERDUE = "invoice_overdue"
    INVOICE_PAID = "invoice_paid"
    CANCEL_NOW = "cancel_now"
    SCHEDULE_CANCEL = "schedule_cancel"
    REVOKE_CANCEL = "revoke_cancel"
    PERIOD_END_REACHED = "period_end_reached"


@dataclass(frozen=True, slots=True)
class SubscriptionState:
    """A subscription's status plus whether it is set to end at the current period's end."""

    status: SubscriptionStatus
    cancel_at_period_end: bool = False

    def __str__(self) -> str:
        return f"{self.status} (cancel scheduled)" if self.cancel_at_period_end else str(self.status)


_S, _SA = SubscriptionStatus, SubscriptionAction
_LIVE = (_S.TRIALING, _S.ACTIVE, _S.PAST_DUE)


def _st(status: SubscriptionStatus, scheduled: bool = False) -> SubscriptionState:
    return SubscriptionState(status, scheduled)


def _subscription_table() -> dict[tuple[SubscriptionState | None, SubscriptionAction], SubscriptionState]:
    """Build the table drawn in the module docstring, row by row."""
    table: dict[tuple[SubscriptionState | None, SubscriptionAction], SubscriptionState] = {
        (None, _SA.START): _st(_S.ACTIVE),
        (None, _SA.START_TRIAL): _st(_S.TRIALING),
        (_st(_S.TRIALING), _SA.TRIAL_END): _st(_S.ACTIVE),
        (_st(_S.TRIALING, True), _SA.TRIAL_END): _st(_S.ENDED),
        (_st(_S.CANCELED), _SA.PERIOD_END_REACHED): _st(_S.ENDED),
    }
    for status in _LIVE:
        for scheduled in (False, True):
            here = _st(status, scheduled)
            table[(here, _SA.CANCEL_NOW)] = _st(_S.CANCELED)
            flip = _SA.REVOKE_CANCEL if scheduled else _SA.SCHEDULE_CANCEL
            table[(here, flip)] = _st(status, not scheduled)
            if status is _S.TRIALING:
                continue
            table[(here, _SA.INVOICE_OVERDUE)] = _st(_S.PAST_DUE, scheduled)
            table[(here, _SA.INVOICE_PAID)] = _st(_S.ACTIVE, scheduled)
            table[(here, _SA.PERIOD_END_REACHED)] = _st(_S.ENDED) if scheduled else here
    return table


SUBSCRIPTION_TRANSITIONS: dict[tuple[SubscriptionState | None, SubscriptionAction], SubscriptionState] = (
    _subscription_table()
)
"""Every legal subscription move (`None` = not started); anything not listed is illegal."""

FINAL_SUBSCRIPTION_STATUSES: frozenset[SubscriptionStatus] = frozenset({_S.ENDED})


def advance_subscription(
    state: SubscriptionState | None, action: SubscriptionAction, *, subject: str = "subscription"
) -> SubscriptionState:
    """The state a subscription in `state` (None: not started) moves to under `action`.

    `subject` names the subscription in the error message (e.g. "subscription sub_1").

    Raises:
        IllegalTransition: the table has no such move (e.g. revoking a cancel that is not
            scheduled, or anything after the subscription ended).
    """
    try:
        return SUBSCRIPTION_TRANSITIONS[(state, action)]
    except KeyError:
        current = "not started" if state is None else str(state)
        raise IllegalTransition(subject, current, str(action)) from None


# --- the rules in plain words, for IllegalTransition --------------------------------------

_INVOICE_DONE = {
    InvoiceAction.ISSUE: "issued",
    InvoiceAction.MARK_PAID: "marked paid",
    InvoiceAction.VOID: "voided",
    InvoiceAction.MARK_UNCOLLECTIBLE: "marked uncollectible",
}
_SUBSCRIPTION_RULES = {
    SubscriptionAction.START: "only a subscription that has not started can start",
    SubscriptionAction.START_TRIAL: "only a subscription that has not started can start a trial",
    SubscriptionAction.TRIAL_END: "only a subscription in its trial can end the trial",
    SubscriptionAction.INVOICE_OVERDUE: "only an active or past-due subscription can become past due",
    SubscriptionAction.INVOICE_PAID: "only an active or past-due subscription can be settled by a payment",
    SubscriptionAction.CANCEL_NOW: "only a trialing, active or past-due subscription can be canceled",
    SubscriptionAction.SCHEDULE_CANCEL: (
        "only a trialing, active or past-due subscription without a scheduled cancel can be set to "
        "cancel at its period's end"
    ),
    SubscriptionAction.REVOKE_CANCEL: "only a cancel scheduled for a period's end can be revoked, before that end",
    SubscriptionAction.PERIOD_END_REACHED: "only a started, not yet ended subscription reaches a period's end",
}


def _rule(action: str) -> str:
    """Which states allow `action`, in words; invoice rules are read off INVOICE_TRANSITIONS."""
    if action in _INVOICE_DONE:
        allowed = [s.value for s in InvoiceStatus if (s, InvoiceAction(action)) in INVOICE_TRANSITIONS]
        states = " or ".join([", ".join(allowed[:-1]), allowed[-1]] if len(allowed) > 1 else allowed)
        return f"only {states} invoices can be {_INVOICE_DONE[InvoiceAction(action)]}"
    if action in _SUBSCRIPTION_RULES:
        return _SUBSCRIPTION_RULES[SubscriptionAction(action)]
    return f"cannot {action.replace('_', ' ')}"


def require_aware(now: datetime) -> None:
    """The clock reading a status change is stamped with must carry a timezone.

    Raises:
        InvalidInput: `now` is naive.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise InvalidInput(f"the time of a status change needs a timezone, got {now.isoformat()}")
