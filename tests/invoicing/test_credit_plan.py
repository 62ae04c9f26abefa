"""The pure credit planner: what each mode credits, and that no sequence of requests over-credits."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from invoicing.credit_notes import (
    AMOUNT_CREDIT_DESCRIPTION,
    CreditAll,
    CreditAmount,
    CreditLines,
    CreditRequest,
    InvalidCreditAmount,
    InvoiceLineNotFound,
    LineBalance,
    OverCredit,
    PlannedLine,
    parse_credit_amount,
    plan_credit,
)
from schemas.errors import InvalidInput


def _lines(*amounts: int, credited: tuple[int, ...] = ()) -> list[LineBalance]:
    done = credited or (0,) * len(amounts)
    return [LineBalance(f"l{i}", f"line {i}", a, c) for i, (a, c) in enumerate(zip(amounts, done, strict=True))]


def _plan(request: CreditRequest, lines: list[LineBalance], credited: int = 0) -> list[PlannedLine]:
    total = sum(line.amount_minor for line in lines)
    return plan_credit(
        request, subject="invoice in_1", currency="USD", total_minor=total, credited_minor=credited, lines=lines
    )


def _amounts(planned: list[PlannedLine]) -> list[tuple[str | None, int]]:
    return [(p.line.line_key if p.line else None, p.amount_minor) for p in planned]


def test_all_credits_every_line_in_full() -> None:
    assert _amounts(_plan(CreditAll(), _lines(1500, 0, 500))) == [("l0", 1500), ("l2", 500)]


def test_all_after_an_amount_credit_fills_lines_in_order_up_to_the_invoice_remainder() -> None:
    # 300 was credited as an amount (no line): 1700 remains of the invoice, 2000 of the lines.
    assert _amounts(_plan(CreditAll(), _lines(1500, 500), credited=300)) == [("l0", 1500), ("l1", 200)]


def test_all_skips_a_negative_line_and_stops_at_the_total() -> None:
    lines = _lines(1000, -200, 500)  # total 1300
    assert _amounts(_plan(CreditAll(), lines)) == [("l0", 1000), ("l2", 300)]


def test_lines_credit_what_remains_of_each_in_the_order_given() -> None:
    lines = _lines(1500, 500, credited=(400, 0))
    planned = _plan(CreditLines(("l1", "l0")), lines, credited=400)
    assert _amounts(planned) == [("l1", 500), ("l0", 1100)]
    assert [p.description for p in planned] == ["line 1", "line 0"]


def test_amount_credits_exactly_against_no_line() -> None:
    planned = _plan(CreditAmount(Decimal("12.34")), _lines(1500, 500))
    assert _amounts(planned) == [(None, 1234)]
    assert planned[0].description == AMOUNT_CREDIT_DESCRIPTION


@pytest.mark.parametrize(
    ("request_", "credited", "message"),
    [
        (CreditAmount(Decimal("20.01")), 0, "has 20.00 USD left to credit .* cannot credit 20.01 USD"),
        (CreditAmount(Decimal("0.01")), 2000, "has nothing left to credit \\(credited 20.00 of 20.00 USD\\)"),
        (CreditAll(), 2000, "has nothing left to credit"),
        (CreditLines(("l0", "l1")), 300, "has 17.00 USD left to credit .* cannot credit 20.00 USD"),
    ],
)
def test_over_credit_is_refused(request_: CreditRequest, credited: int, message: str) -> None:
    with pytest.raises(OverCredit, match=message) as caught:
        _plan(request_, _lines(1500, 500), credited=credited)
    assert caught.value.code == "over_credit"


def test_a_fully_credited_or_negative_line_has_nothing_left() -> None:
    with pytest.raises(OverCredit, match=r"line 'l0' of invoice in_1 has nothing left to credit \(credited 15\.00 of"):
        _plan(CreditLines(("l0",)), _lines(1500, 500, credited=(1500, 0)), credited=1500)
    with pytest.raises(OverCredit, match="line 'l1'"):
        _plan(CreditLines(("l1",)), _lines(1500, -500))


def test_bad_line_requests() -> None:
    with pytest.raises(InvoiceLineNotFound, match="invoice in_1 has no line 'nope' \\(lines: l0, l1\\)") as caught:
        _plan(CreditLines(("nope",)), _lines(1500, 500))
    assert caught.value.code == "invoice_line_not_found" and isinstance(caught.value, LookupError)
    with pytest.raises(InvalidInput, match="line 'l0' is given twice"):
        _plan(CreditLines(("l0", "l0")), _lines(1500, 500))
    with pytest.raises(InvalidInput, match="at least one"):
        _plan(CreditLines(()), _lines(1500, 500))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "must be greater than zero"),
        ("0.00", "must be greater than zero"),
        ("-5", "must be greater than zero"),
        ("1.001", "has 3 decimal\\(s\\); USD amounts have at most 2"),
        ("1.000", "has 3 decimal\\(s\\)"),
    ],
)
def test_amounts_must_be_positive_and_fit_the_minor_unit(text: str, message: str) -> None:
    with pytest.raises(InvalidCreditAmount, match=message) as caught:
        _plan(CreditAmount(parse_credit_amount(text)), _lines(1500, 500))
    assert caught.value.code == "invalid_credit_amount" and isinstance(caught.value, ValueError)


@pytest.mark.parametrize("text", ["abc", "1e3", "1,50", "NaN", "Infinity", "", "1.", ".5", "1_000", "0x10"])
def test_only_plain_decimals_parse(text: str) -> None:
    with pytest.raises(InvalidCreditAmount, match=r"is not a decimal number such as 12\.50"):
        parse_credit_amount(text)


def test_parsing_is_exact() -> None:
    assert parse_credit_amount(" 12.50 ") == Decimal("12.50")
    assert parse_credit_amount("99999999999999999999999999999.99").as_tuple().digits[-1] == 9


_REQUESTS = st.one_of(
    st.just(CreditAll()),
    st.lists(st.sampled_from(["l0", "l1", "l2"]), min_size=1, max_size=3, unique=True).map(
        lambda keys: CreditLines(tuple(keys))
    ),
    st.integers(min_value=1, max_value=3000).map(lambda n: CreditAmount(Decimal(n).scaleb(-2))),
)


@given(
    amounts=st.lists(st.integers(min_value=-500, max_value=2000), min_size=3, max_size=3),
    requests=st.lists(_REQUESTS, max_size=8),
)
def test_no_sequence_of_credits_exceeds_the_invoice_or_a_line(
    amounts: list[int], requests: list[CreditRequest]
) -> None:
    total = sum(amounts)
    per_line = dict.fromkeys(("l0", "l1", "l2"), 0)
    credited = 0
    for request in requests:
        lines = [LineBalance(k, k, a, per_line[k]) for k, a in zip(per_line, amounts, strict=True)]
        try:
            planned = plan_credit(
                request, subject="invoice in_1", currency="USD", total_minor=total, credited_minor=credited, lines=lines
            )
        except OverCredit:
            continue
        assert planned and all(p.amount_minor > 0 for p in planned)
        for p in planned:
            if p.line is not None:
                per_line[p.line.line_key] += p.amount_minor
        credited += sum(p.amount_minor for p in planned)
        assert credited <= total
        assert all(per_line[k] <= max(a, 0) for k, a in zip(per_line, amounts, strict=True))
        if isinstance(request, CreditAll):
            assert credited == total, "--all leaves nothing creditable"
