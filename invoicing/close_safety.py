"""What keeps one subscription's bad data from stopping the close for everyone else.

The close (`invoicing.close`) claims a batch of due periods and writes their invoices in one
transaction, with bulk statements, because that is what makes it fast. This module is the
isolation around that batch:

- `load_histories_isolated`: a plan that no longer validates (a catalog written before a
  bound existed, a row edited by hand) fails only the subscriptions that use it;
- `check_storable`: an invoice whose amounts Postgres cannot store (`bigint` minor units,
  `numeric` quantities) fails before anything is written, with a reason that says so;
- `write_isolated`: the batch's write runs under a savepoint; if Postgres still refuses it
  (an inconsistent catalog, a constraint), the batch is split in halves until the refused
  invoices stand alone, and only they fail;
- `record_failure`: a failed period gets a `close_failures` row with a one-line reason and a
  retry time with exponential backoff;
- `outstanding_failures`: the periods still failing, so `valora close` reports them and exits
  non-zero until someone fixes the data (the retries alone never make a failure go away), and
  `retry_now` (`valora close --retry-failed`) to retry them without waiting for the backoff;
- `check_as_of`: the close never bills the future unless a simulation asks for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
import sqlalchemy.exc as sa_exc
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from invoicing import models as m
from invoicing.invoice_rows import BilledLine, ClosingItem, write_invoices
from schemas.errors import InvalidInput, ValoraError

RETRY_BASE = timedelta(seconds=30)
RETRY_MAX = timedelta(hours=6)
MAX_MINOR = 2**63 - 1
"""The largest amount an invoice can hold, in minor units: Postgres `bigint`."""
_NUMERIC_MAX_INTEGER_DIGITS = 131072  # Postgres `numeric`: digits before the decimal point

Key = tuple[str, str]  # (organization, subscription)


class AsOfInFuture(InvalidInput):
    """`valora close --as-of` lies in the future: closing it would bill periods that have not happened."""

    code = "as_of_in_future"


class InvoiceOutOfRange(InvalidInput):
    """An invoice's amount or quantity is beyond what the store holds; the period is not closed."""

    code = "invoice_out_of_range"


# --- the close's clock --------------------------------------------------------------------------


def check_as_of(as_of: datetime, now: datetime, tolerance: timedelta, *, allow_future: bool) -> datetime:
    """The instant the close may treat as "now": `as_of`, never later than the real clock.

    An `as_of` beyond `now + tolerance` is refused (a typo like 2100 would bill every period up to
    it); one within the tolerance (a clock a little ahead) is clamped to `now`, so a period is
    closed only once it has really ended. `allow_future` is for simulations: `as_of` as given.

    Raises:
        AsOfInFuture: `as_of` is later than `now + tolerance` and `allow_future` is false.
    """
    if allow_future or as_of <= now:
        return as_of
    if as_of > now + tolerance:
        raise AsOfInFuture(
            f"--as-of {as_of.isoformat()} is in the future (now {now.isoformat()}); the close never bills "
            "periods that have not ended (pass --allow-future for a simulation)"
        )
    return now


# --- storable amounts -----------------------------------------------------------------------------


def check_storable(lines: Sequence[BilledLine], currency: str) -> None:
    """Refuse an invoice whose lines or total do not fit the invoice tables.

    Cheap enough for every invoice of a bulk close: integer comparisons, and `Decimal.adjusted`
    for the integer digits of quantities and amounts. (A value with more than 16,383 decimals
    is left to Postgres, whose refusal `write_isolated` then pins on this invoice alone.)

    Raises:
        InvoiceOutOfRange: names the line (or the total) and the limit.
    """
    total = 0
    for line in lines:
        if not -MAX_MINOR <= line.amount_minor <= MAX_MINOR:
            raise InvoiceOutOfRange(
                f"line {line.line_key!r}: amount {line.amount_minor} {currency} minor units is beyond the largest "
                f"storable amount ({MAX_MINOR})"
            )
        for name, value in (("quantity", line.quantity), ("amount", line.amount)):
            if not value.is_finite() or value.adjusted() >= _NUMERIC_MAX_INTEGER_DIGITS:
                raise InvoiceOutOfRange(f"line {line.line_key!r}: {name} {value} is beyond what numeric can store")
        total += line.amount_minor
    if not -MAX_MINOR <= total <= MAX_MINOR:
        raise InvoiceOutOfRange(
            f"invoice total {total} {currency} minor units is beyond the largest storable amount ({MAX_MINOR})"
        )


# --- failures -------------------------------------------------------------------------------------


def failure_reason(exc: BaseException) -> str:
    """One line saying why a period failed: our error's code and message, or what Postgres refused."""
    if isinstance(exc, ValoraError):
        text_ = f"{exc.code}: {exc.message}"
    elif isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        text_ = f"refused by the database: {type(exc.orig).__name__}: {exc.orig}"
    elif isinstance(exc, psycopg.Error):
        text_ = f"refused by the database: {type(exc).__name__}: {exc}"
    else:
        text_ = f"{type(exc).__name__}: {exc}"
    return (text_.strip().splitlines() or [type(exc).__name__])[0][:500]


def record_failure(
    session: Session, sub: m.Subscription, period_start: datetime, exc: BaseException, now: datetime
) -> str:
    """Record that `sub`'s period starting at `period_start` could not be closed; retry it later.

    The retry waits 30 s, doubling per attempt up to 6 h. Returns the line the close reports.
    """
    sub.close_attempts += 1
    delay = min(RETRY_BASE * 2 ** min(sub.close_attempts - 1, 20), RETRY_MAX)
    sub.close_retry_at = now + delay
    reason = failure_reason(exc)
    session.merge(
        m.CloseFailure(
            organization_id=sub.organization_id,
            subscription_id=sub.id,
            period_start=period_start,
            attempts=sub.close_attempts,
            error=reason,
            failed_at=now,
            retry_at=sub.close_retry_at,
        )
    )
    return f"{sub.organization_id}/{sub.id} {period_start:%Y-%m-%d}: {reason}"


@dataclass(frozen=True)
class OutstandingFailure:
    """A period that failed to close and is still waiting for its retry (or for a fix)."""

    organization: str
    subscription: str
    period_start: datetime
    attempts: int
    error: str
    retry_at: datetime

    def line(self) -> str:
        return (
            f"{self.organization}/{self.subscription} {self.period_start:%Y-%m-%d}: {self.error} "
            f"(attempt {self.attempts}, next retry {self.retry_at.isoformat()})"
        )


def outstanding_failures(engine: Engine, organization: str | None = None) -> list[OutstandingFailure]:
    """Periods whose last close attempt failed and that have not been closed since.

    A failure is outstanding while its subscription's cursor still stands on the failed period
    with failed attempts counted; a successful close resets both, so old rows stop counting.
    """
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT f.organization_id, f.subscription_id, f.period_start, f.attempts, f.error, f.retry_at "
                "FROM close_failures f JOIN subscriptions s "
                "ON s.organization_id = f.organization_id AND s.id = f.subscription_id "
                "WHERE s.close_attempts > 0 AND s.next_period_start = f.period_start "
                "AND (CAST(:org AS text) IS NULL OR f.organization_id = :org) "
                "ORDER BY f.organization_id, f.subscription_id"
            ),
            {"org": organization},
        ).all()
    return [OutstandingFailure(*row) for row in rows]


def retry_now(engine: Engine, organization: str | None = None) -> int:
    """Make every failing period claimable at once (after the data was fixed); returns how many.

    Only the backoff is cleared: the attempt count stays, so a period that fails again waits longer.
    """
    with engine.begin() as conn:
        result = conn.execute(
            text(
                "UPDATE subscriptions SET close_retry_at = NULL WHERE close_attempts > 0 "
                "AND close_retry_at IS NOT NULL AND (CAST(:org AS text) IS NULL OR organization_id = :org)"
            ),
            {"org": organization},
        )
    return int(result.rowcount)


# --- isolating the batch --------------------------------------------------------------------------


def load_histories_isolated(
    session: Session,
    subs: list[m.Subscription],
    load: Callable[[Session, list[m.Subscription]], dict[Key, Any]],
) -> tuple[dict[Key, Any], dict[Key, Exception]]:
    """`load(session, subs)` for the batch, or, if it fails, subscription by subscription.

    Loading only reads, so a failure (a stored plan that no longer validates) leaves the
    transaction usable; the subscriptions whose load still fails alone come back as failures.
    """
    try:
        return load(session, subs), {}
    except (ValueError, ArithmeticError, LookupError) as batch_exc:
        histories: dict[Key, Any] = {}
        failed: dict[Key, Exception] = {}
        for sub in subs:
            key = (sub.organization_id, sub.id)
            try:
                histories.update(load(session, [sub]))
            except (ValueError, ArithmeticError, LookupError) as exc:
                failed[key] = exc
        if not failed:  # the batch failed but no subscription alone does: not a data problem
            raise batch_exc
        return histories, failed


# Postgres refusing the rows themselves; a lost connection or a timeout is not isolated (it aborts the batch).
_REFUSED = (
    psycopg.DataError,
    psycopg.IntegrityError,
    sa_exc.DataError,
    sa_exc.IntegrityError,
    ValueError,
    OverflowError,
)


_BAD_DATA = (ValueError, ArithmeticError, LookupError, TypeError, *_REFUSED)


def per_item_isolated(
    session: Session,
    items: list[ClosingItem],
    compute: Callable[[list[ClosingItem]], dict[str, Any]],
) -> tuple[dict[str, Any], dict[str, Exception]]:
    """`compute(items)` (a result per invoice id, written under a savepoint), bisecting around failures.

    For a step of the close that reads and writes for the whole batch at once (billing late
    usage): when it fails, its writes are rolled back and each half is tried again, so only the
    items that fail alone come back, each with its error (keyed by invoice id).
    """
    if not items:
        return {}, {}
    try:
        with session.begin_nested():
            return compute(items), {}
    except _BAD_DATA as exc:
        if len(items) == 1:
            return {}, {items[0].invoice_id: exc}
    half = len(items) // 2
    left, left_failed = per_item_isolated(session, items[:half], compute)
    right, right_failed = per_item_isolated(session, items[half:], compute)
    return left | right, left_failed | right_failed


def write_isolated(
    session: Session, items: list[ClosingItem], orgs: dict[str, m.Organization], issued_at: datetime
) -> list[tuple[ClosingItem, Exception]]:
    """Write the items' invoices; return the items Postgres refused, each with its error.

    The whole list is written at once under a savepoint (the normal case: one round of COPYs).
    When Postgres refuses it, the savepoint is rolled back and each half is tried the same way,
    until the refused invoices stand alone: k bad invoices cost about 2·k·log2(n) writes, and
    the others keep their gapless numbers in order (a rolled-back try takes its numbers back).
    """
    if not items:
        return []
    try:
        with session.begin_nested():
            write_invoices(session, items, orgs, issued_at)
        return []
    except _REFUSED as exc:
        if len(items) == 1:
            return [(items[0], exc)]
    half = len(items) // 2
    return write_isolated(session, items[:half], orgs, issued_at) + write_isolated(
        session, items[half:], orgs, issued_at
    )


def unbill_late_usage(session: Session, invoice_ids: Sequence[str]) -> None:
    """Give back late usage the batch attached to invoices that were not written, for their retry."""
    if invoice_ids:
        session.execute(
            text("UPDATE late_usage SET billed_invoice_id = NULL WHERE billed_invoice_id = ANY(CAST(:ids AS text[]))"),
            {"ids": list(invoice_ids)},
        )
