"""The invoice and subscription state machines: the tables as specified, and Hypothesis properties."""

from __future__ import annotations

import re
from collections import deque
from itertools import product

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from invoicing import lifecycle
from invoicing.lifecycle import (
    FINAL_INVOICE_STATUSES,
    FINAL_SUBSCRIPTION_STATUSES,
    SUBSCRIPTION_TRANSITIONS,
    IllegalTransition,
    InvoiceAction,
    InvoiceStatus,
    SubscriptionAction,
    SubscriptionState,
    SubscriptionStatus,
    advance_invoice,
    advance_subscription,
)
from schemas.errors import ValoraError

IS, IA = InvoiceStatus, InvoiceAction
S, SA = SubscriptionStatus, SubscriptionAction

# The invoice table from the specification, written out independently of the code.
SPEC_INVOICE_MOVES = {
    (IS.DRAFT, IA.ISSUE): IS.ISSUED,
    (IS.DRAFT, IA.VOID): IS.VOID,
    (IS.ISSUED, IA.MARK_PAID): IS.PAID,
    (IS.ISSUED, IA.VOID): IS.VOID,
    (IS.ISSUED, IA.MARK_UNCOLLECTIBLE): IS.UNCOLLECTIBLE,
    (IS.UNCOLLECTIBLE, IA.MARK_PAID): IS.PAID,
    (IS.UNCOLLECTIBLE, IA.VOID): IS.VOID,
}


@pytest.mark.parametrize(("status", "action"), list(product(InvoiceStatus, InvoiceAction)))
def test_invoice_table_matches_the_specification(status: InvoiceStatus, action: InvoiceAction) -> None:
    expected = SPEC_INVOICE_MOVES.get((status, action))
    if expected is None:
        with pytest.raises(IllegalTransition) as caught:
            advance_invoice(status, action, subject="invoice in_x")
        assert caught.value.code == "illegal_transition"
        message = str(caught.value)  # plain words: no internal action names such as mark_paid
        assert message.startswith(f"invoice in_x is {status}; only ") and "_" not in message.removeprefix(
            "invoice in_x"
        )
    else:
        assert advance_invoice(status, action) is expected


def test_illegal_transition_is_a_valora_error_with_its_parts() -> None:
    with pytest.raises(ValoraError) as caught:
        advance_invoice(IS.PAID, IA.VOID, subject="invoice in_9")
    err = caught.value
    assert isinstance(err, IllegalTransition)
    assert (err.subject, err.state, err.action) == ("invoice in_9", "paid", "void")


def test_final_invoice_states_are_paid_and_void() -> None:
    assert frozenset({IS.PAID, IS.VOID}) == FINAL_INVOICE_STATUSES


@pytest.mark.parametrize(
    ("start", "actions", "expected"),
    [
        (None, [SA.START], S.ACTIVE),
        (None, [SA.START_TRIAL, SA.TRIAL_END], S.ACTIVE),
        (None, [SA.START, SA.INVOICE_OVERDUE, SA.INVOICE_PAID], S.ACTIVE),
        (None, [SA.START, SA.PERIOD_END_REACHED, SA.PERIOD_END_REACHED], S.ACTIVE),
        (None, [SA.START, SA.SCHEDULE_CANCEL, SA.PERIOD_END_REACHED], S.ENDED),
        (None, [SA.START, SA.SCHEDULE_CANCEL, SA.REVOKE_CANCEL, SA.PERIOD_END_REACHED], S.ACTIVE),
        (None, [SA.START, SA.INVOICE_OVERDUE, SA.SCHEDULE_CANCEL, SA.INVOICE_PAID, SA.PERIOD_END_REACHED], S.ENDED),
        (None, [SA.START_TRIAL, SA.SCHEDULE_CANCEL, SA.TRIAL_END], S.ENDED),
        (None, [SA.START, SA.CANCEL_NOW, SA.PERIOD_END_REACHED], S.ENDED),
    ],
)
def test_subscription_stories(
    start: SubscriptionState | None, actions: list[SubscriptionAction], expected: SubscriptionStatus
) -> None:
    state = start
    for action in actions:
        state = advance_subscription(state, action)
    assert state is not None and state.status is expected


@pytest.mark.parametrize(
    ("state", "action", "message"),
    [
        (
            None,
            SA.CANCEL_NOW,
            "subscription sub_1 is not started; only a trialing, active or past-due subscription can be canceled",
        ),
        (
            SubscriptionState(S.ACTIVE),
            SA.START,
            "subscription sub_1 is active; only a subscription that has not started can start",
        ),
        (
            SubscriptionState(S.ACTIVE),
            SA.REVOKE_CANCEL,
            "subscription sub_1 is active; only a cancel scheduled for a period's end can be revoked, before that end",
        ),
        (
            SubscriptionState(S.ACTIVE, True),
            SA.SCHEDULE_CANCEL,
            "subscription sub_1 is active (cancel scheduled); only a trialing, active or past-due subscription "
            "without a scheduled cancel can be set to cancel at its period's end",
        ),
        (
            SubscriptionState(S.TRIALING),
            SA.INVOICE_OVERDUE,
            "subscription sub_1 is trialing; only an active or past-due subscription can become past due",
        ),
        (
            SubscriptionState(S.CANCELED),
            SA.INVOICE_PAID,
            "subscription sub_1 is canceled; only an active or past-due subscription can be settled by a payment",
        ),
        (
            SubscriptionState(S.ENDED),
            SA.START,
            "subscription sub_1 is ended; only a subscription that has not started can start",
        ),
    ],
)
def test_illegal_subscription_moves_name_state_and_action(
    state: SubscriptionState | None, action: SubscriptionAction, message: str
) -> None:
    with pytest.raises(IllegalTransition, match=f"^{re.escape(message)}$"):
        advance_subscription(state, action, subject="subscription sub_1")


def test_subscription_table_in_the_docstring_matches_the_code() -> None:
    """The drawn table is documentation people trust; it must not drift from the code."""
    doc = lifecycle.__doc__ or ""
    drawn: dict[tuple[str, str], str] = {}
    rows = re.findall(r"^    (\(none\)|[a-z_]+\+?)(?: \(final\))?\s{2,}(.+)$", doc, flags=re.MULTILINE)
    for label, cells in rows:
        values = cells.split()
        if label == "state" or len(values) != len(SubscriptionAction):
            continue  # the header, or a row of the invoice table
        for action, value in zip(SubscriptionAction, values, strict=True):
            if value != "·":
                drawn[(label, action.value)] = value

    def name(state: SubscriptionState | None) -> str:
        if state is None:
            return "(none)"
        return state.status.value + ("+" if state.cancel_at_period_end else "")

    coded = {(name(src), action.value): name(dst) for (src, action), dst in SUBSCRIPTION_TRANSITIONS.items()}
    assert drawn == coded


# --- properties ---------------------------------------------------------------------------


def _reachable_invoice_statuses() -> set[InvoiceStatus]:
    seen, todo = {IS.DRAFT}, deque([IS.DRAFT])
    while todo:
        status = todo.popleft()
        for action in InvoiceAction:
            try:
                nxt = advance_invoice(status, action)
            except IllegalTransition:
                continue
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _reachable_subscription_states() -> set[SubscriptionState]:
    seen: set[SubscriptionState] = set()
    todo: deque[SubscriptionState | None] = deque([None])
    while todo:
        state = todo.popleft()
        for action in SubscriptionAction:
            try:
                nxt = advance_subscription(state, action)
            except IllegalTransition:
                continue
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_invoice_status_is_reachable_from_draft() -> None:
    assert _reachable_invoice_statuses() == set(InvoiceStatus)


def test_every_subscription_status_and_flag_combination_is_reachable() -> None:
    reachable = _reachable_subscription_states()
    assert {s.status for s in reachable} == set(SubscriptionStatus)
    live = {S.TRIALING, S.ACTIVE, S.PAST_DUE}
    assert {(s.status, s.cancel_at_period_end) for s in reachable} == (
        {(s, f) for s in live for f in (False, True)} | {(S.CANCELED, False), (S.ENDED, False)}
    )


@given(st.lists(st.sampled_from(InvoiceAction), max_size=12))
def test_any_action_sequence_stays_in_the_invoice_machine(actions: list[InvoiceAction]) -> None:
    status = IS.DRAFT
    for action in actions:
        legal = (status, action) in SPEC_INVOICE_MOVES
        try:
            nxt = advance_invoice(status, action)
        except IllegalTransition:
            assert not legal
            continue
        assert legal
        assert isinstance(nxt, InvoiceStatus)
        assert status not in FINAL_INVOICE_STATUSES
        status = nxt


class InvoiceMachine(RuleBasedStateMachine):
    """Random walks over invoice actions, checking what must always hold."""

    def __init__(self) -> None:
        super().__init__()
        self.status = IS.DRAFT
        self.visited: list[InvoiceStatus] = [IS.DRAFT]

    @rule(action=st.sampled_from(InvoiceAction))
    def act(self, action: InvoiceAction) -> None:
        before = self.status
        try:
            self.status = advance_invoice(before, action)
        except IllegalTransition as err:
            assert (before, action) not in SPEC_INVOICE_MOVES
            assert err.state == before and err.action == action
            return
        assert before not in FINAL_INVOICE_STATUSES, "a final state was left"
        self.visited.append(self.status)

    @invariant()
    def status_is_in_the_enum(self) -> None:
        assert self.status in set(InvoiceStatus)

    @invariant()
    def final_states_stay_final(self) -> None:
        first_final = next((i for i, s in enumerate(self.visited) if s in FINAL_INVOICE_STATUSES), None)
        if first_final is not None:
            assert self.visited[first_final:] == [self.visited[first_final]]

    @invariant()
    def never_back_to_draft(self) -> None:
        assert IS.DRAFT not in self.visited[1:]


class SubscriptionMachine(RuleBasedStateMachine):
    """Random walks over subscription actions from "not started"."""

    def __init__(self) -> None:
        super().__init__()
        self.state: SubscriptionState | None = None
        self.visited: list[SubscriptionState] = []

    @rule(action=st.sampled_from(SubscriptionAction))
    def act(self, action: SubscriptionAction) -> None:
        before = self.state
        try:
            self.state = advance_subscription(before, action)
        except IllegalTransition as err:
            assert (before, action) not in SUBSCRIPTION_TRANSITIONS
            assert err.action == action
            assert self.state == before
            return
        assert before is None or before.status not in FINAL_SUBSCRIPTION_STATUSES
        self.visited.append(self.state)

    @precondition(lambda self: self.state is not None)
    @rule()
    def cancel_now_is_legal_while_live(self) -> None:
        assert self.state is not None
        live = self.state.status in {S.TRIALING, S.ACTIVE, S.PAST_DUE}
        assert ((self.state, SA.CANCEL_NOW) in SUBSCRIPTION_TRANSITIONS) == live

    @invariant()
    def state_is_well_formed(self) -> None:
        if self.state is None:
            return
        assert self.state.status in set(SubscriptionStatus)
        if self.state.status in {S.CANCELED, S.ENDED}:
            assert not self.state.cancel_at_period_end

    @invariant()
    def no_way_back(self) -> None:
        statuses = [s.status for s in self.visited]
        for i, status in enumerate(statuses):
            rest = set(statuses[i:])
            if status is S.ENDED:
                assert rest == {S.ENDED}
            if status is S.CANCELED:
                assert rest <= {S.CANCELED, S.ENDED}
            if status is not S.TRIALING:
                assert S.TRIALING not in rest


TestInvoiceMachine = InvoiceMachine.TestCase
TestSubscriptionMachine = SubscriptionMachine.TestCase
