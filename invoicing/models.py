"""Postgres tables, as SQLAlchemy 2 typed mappings.

Every key starts with `organization_id`: a tenant's rows can only be reached through
its own id, and composite foreign keys keep a subscription from pointing at another
tenant's customer or plan. Money is integer minor units (`*_minor`); quantities and
prices are NUMERIC; timestamps are `timestamptz`.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from invoicing.lifecycle import SubscriptionStatus

TS = DateTime(timezone=True)
SUBSCRIPTION_STATUSES_SQL = ",".join(f"'{s.value}'" for s in SubscriptionStatus)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: TS, Decimal: Numeric, dict[str, Any]: JSONB}


class Organization(Base):
    __tablename__ = "organizations"
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    currency: Mapped[str] = mapped_column(String(3))
    payment_terms_days: Mapped[int] = mapped_column(Integer, default=30)
    invoice_prefix: Mapped[str] = mapped_column(Text)
    # How long the close's invoices stay drafts before the `issue_drafts` job issues them (0: issued at once).
    draft_grace_s: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    __table_args__ = (
        CheckConstraint("draft_grace_s >= 0", name="organization_draft_grace"),
        UniqueConstraint(
            "invoice_prefix", name="organization_invoice_prefix", deferrable=True, initially="DEFERRED"
        ),  # migration 0009
    )


class Meter(Base):
    __tablename__ = "meters"
    organization_id: Mapped[str] = mapped_column(Text, primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    event_type: Mapped[str] = mapped_column(Text)
    aggregation: Mapped[str] = mapped_column(Text)
    value_property: Mapped[str | None] = mapped_column(Text)
    filters: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    allow_negative: Mapped[bool] = mapped_column(server_default=text("false"))
    __table_args__ = (
        ForeignKeyConstraint(["organization_id"], ["organizations.id"]),
        CheckConstraint("aggregation IN ('count','sum','max','unique_count','latest')", name="meter_aggregation"),
    )


class Plan(Base):
    __tablename__ = "plans"
    organization_id: Mapped[str] = mapped_column(Text, primary_key=True)
    code: Mapped[str] = mapped_column(Text, primary_key=True)
    currency: Mapped[str] = mapped_column(String(3))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONB)
    __table_args__ = (ForeignKeyConstraint(["organization_id"], ["organizations.id"]),)


class Customer(Base):
    __tablename__ = "customers"
    organization_id: Mapped[str] = mapped_column(Text, primary_key=True)
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    __table_args__ = (ForeignKeyConstraint(["organization_id"], ["organizations.id"]),)


class Subscription(Base):
    __tablename__ = "subscriptions"
    organization_id: Mapped[str] = mapped_column(Text, primary_key=True)
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    customer_id: Mapped[str] = mapped_column(Text)
    plan_code: Mapped[str] = mapped_column(Text)
    start_at: Mapped[datetime] = mapped_column(TS)
    billing_anchor: Mapped[datetime] = mapped_column(TS)
    end_at: Mapped[datetime | None] = mapped_column(TS)
    # The close's cursor: the next period to invoice, and when it becomes due (NULL: none left).
    next_period_start: Mapped[datetime] = mapped_column(TS)
    next_close_at: Mapped[datetime | None] = mapped_column(TS)
    close_attempts: Mapped[int] = mapped_column(Integer, default=0)
    close_retry_at: Mapped[datetime | None] = mapped_column(TS)
    # The lifecycle (invoicing.lifecycle, written by invoicing.subscriptions and the close).
    status: Mapped[str] = mapped_column(Text, server_default="active")
    cancel_at_period_end: Mapped[bool] = mapped_column(server_default=text("false"))
    trial_end: Mapped[datetime | None] = mapped_column(TS)
    canceled_at: Mapped[datetime | None] = mapped_column(TS)  # when a cancel (now or scheduled) was asked for
    # In-advance billing: the opening invoice is still to be written; in-advance flat fees are billed up to here.
    opening_pending: Mapped[bool] = mapped_column(server_default=text("false"))
    advance_billed_until: Mapped[datetime | None] = mapped_column(TS)
    __table_args__ = (
        ForeignKeyConstraint(["organization_id", "customer_id"], ["customers.organization_id", "customers.id"]),
        ForeignKeyConstraint(["organization_id", "plan_code"], ["plans.organization_id", "plans.code"]),
        CheckConstraint("end_at IS NULL OR end_at > start_at", name="subscription_window"),
        CheckConstraint(f"status IN ({SUBSCRIPTION_STATUSES_SQL})", name="subscription_status"),
        CheckConstraint("trial_end IS NULL OR trial_end > start_at", name="subscription_trial"),
        CheckConstraint("status <> 'trialing' OR trial_end IS NOT NULL", name="subscription_trialing"),
        CheckConstraint(
            "NOT cancel_at_period_end OR (status IN ('trialing','active','past_due') "
            "AND end_at IS NOT NULL AND canceled_at IS NOT NULL)",
            name="subscription_cancel_scheduled",
        ),
        CheckConstraint(
            "status <> 'canceled' OR (end_at IS NOT NULL AND canceled_at IS NOT NULL)", name="subscription_canceled"
        ),
        Index("ix_subscriptions_customer", "organization_id", "customer_id"),
        Index("ix_subscriptions_due", "next_close_at"),
        # Small partial indexes for the scheduler's lifecycle jobs (they only look at these rows).
        Index("ix_subscriptions_trialing", "trial_end", postgresql_where=text("status = 'trialing'")),
        Index("ix_subscriptions_past_due", "organization_id", "id", postgresql_where=text("status = 'past_due'")),
    )


class SubscriptionStatusChange(Base):
    """One move of a subscription's lifecycle; `seq` counts from 1 without gaps per subscription."""

    __tablename__ = "subscription_status_history"
    organization_id: Mapped[str] = mapped_column(Text, primary_key=True)
    subscription_id: Mapped[str] = mapped_column(Text, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    from_status: Mapped[str | None] = mapped_column(Text)
    to_status: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(TS)
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(Text)
    __table_args__ = (
        ForeignKeyConstraint(
            ["organization_id", "subscription_id"], ["subscriptions.organization_id", "subscriptions.id"]
        ),
        CheckConstraint("seq >= 1", name="subscription_history_seq"),
    )


class PlanChange(Base):
    """A change of a subscription's plan, in force from `effective_at` (until the next change).

    The plan in force at t is the `to_plan` of the last change at or before t, else the
    subscription's `plan_code` (the plan it started on). `id` grows with every change; the
    worker compares the largest one with its catalog snapshot's.
    """

    __tablename__ = "subscription_plan_changes"
    organization_id: Mapped[str] = mapped_column(Text, primary_key=True)
    subscription_id: Mapped[str] = mapped_column(Text, primary_key=True)
    effective_at: Mapped[datetime] = mapped_column(TS, primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True))
    from_plan: Mapped[str] = mapped_column(Text)
    to_plan: Mapped[str] = mapped_column(Text)
    requested_at: Mapped[datetime] = mapped_column(TS)
    actor: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    __table_args__ = (
        ForeignKeyConstraint(
            ["organization_id", "subscription_id"], ["subscriptions.organization_id", "subscriptions.id"]
        ),
        ForeignKeyConstraint(["organization_id", "from_plan"], ["plans.organization_id", "plans.code"]),
        ForeignKeyConstraint(["organization_id", "to_plan"], ["plans.organization_id", "plans.code"]),
        CheckConstraint("from_plan <> to_plan", name="plan_change_changes"),
        UniqueConstraint("id", name="plan_change_id"),
    )


class Event(Base):
    """An accepted usage event: the persisted input every invoice is derived from."""

    __tablename__ = "events"
    organization_id: Mapped[str] = mapped_column(Text, primary_key=True)
    dedup_key: Mapped[str] = mapped_column(Text, primary_key=True)
    customer_id: Mapped[str] = mapped_column(Text)
    event_type: Mapped[str] = mapped_column(Text)
    event_time: Mapped[datetime] = mapped_column(TS)
    properties: Mapped[dict[str, Any]] = mapped_column(JSONB)
    source_topic: Mapped[str] = mapped_column(Text)
    source_partition: Mapped[int] = mapped_column(Integer)
    source_offset: Mapped[int] = mapped_column(BigInteger)


class UsageTotal(Base):
    """Quantity so far per (subscription, meter, billing period, plan segment).

    `segment_start` is the period's start, or the instant of the plan change that began
    the segment when the plan changed inside the period. `latest_time` is the latest event
    time counted (for every aggregation; `latest` meters also keep that event's id).

    `closed` flips to true in the close's transaction; the worker's upsert only adds
    to open rows, so usage that arrives for a closed period becomes late usage instead.
    """

    __tablename__ = "usage_totals"
    organization_id: Mapped[str] = mapped_column(Text, primary_key=True)
    subscription_id: Mapped[str] = mapped_column(Text, primary_key=True)
    meter_key: Mapped[str] = mapped_column(Text, primary_key=True)
    period_start: Mapped[datetime] = mapped_column(TS, primary_key=True)
    segment_start: Mapped[datetime] = mapped_column(TS, primary_key=True)
    period_end: Mapped[datetime] = mapped_column(TS)
    quantity: Mapped[Decimal] = mapped_column(Numeric, default=Decimal(0))
    event_count: Mapped[int] = mapped_column(BigInteger, default=0)
    latest_time: Mapped[datetime | None] = mapped_column(TS)
    latest_event: Mapped[str | None] = mapped_column(Text)
    closed: Mapped[bool] = mapped_column(default=False)
    __table_args__ = (
        CheckConstraint("period_end > period_start", name="usage_period"),
        CheckConstraint("segment_start >= period_start AND segment_start < period_end", name="usage_segment"),
    )


class UsageUniqueValue(Base):
    """Distinct values seen by a `unique_count` meter in one period's plan segment."""

    __tablename__ = "usage_unique_values"
    organization_id: Mapped[str] = mapped_column(Text, primary_key=True)
    subscription_id: Mapped[str] = mapped_column(Text, primary_key=True)
    meter_key: Mapped[str] = mapped_column(Text, primary_key=True)
    period_start: Mapped[datetime] = mapped_column(TS, primary_key=True)
    segment_start: Mapped[datetime] = mapped_column(TS, primary_key=True)
    value: Mapped[str] = mapped_column(Text, primary_key=True)


class LateUsage(Base):
    """Usage that arrived after its period was invoiced; billed on the next invoice.

    Each row keeps what folding it into the billed total needs (`rating.aggregation`).
    """

    __tablename__ = "late_usage"
    organization_id: Mapped[str] = mapped_column(Text, primary_key=True)
    dedup_key: Mapped[str] = mapped_column(Text, primary_key=True)
    subscription_id: Mapped[str] = mapped_column(Text, primary_key=True)
    meter_key: Mapped[str] = mapped_column(Text, primary_key=True)
    period_start: Mapped[datetime] = mapped_column(TS)
    period_end: Mapped[datetime] = mapped_column(TS)
    segment_start: Mapped[datetime] = mapped_column(TS)
    value: Mapped[Decimal] = mapped_column(Numeric)  # unique_count: 1 when the value was new to the segment, else 0
    billed_invoice_id: Mapped[str | None] = mapped_column(Text)
    aggregation: Mapped[str] = mapped_column(Text)  # the meter's, when the event arrived
    event_time: Mapped[datetime] = mapped_column(TS)
    event_id: Mapped[str] = mapped_column(Text)  # with event_time, orders `latest` events
    unique_value: Mapped[str | None] = mapped_column(Text)  # unique_count: the distinct value
    __table_args__ = (
        CheckConstraint(
            "aggregation IN ('count', 'sum', 'max', 'unique_count', 'latest')", name="late_usage_aggregation"
        ),
    )


class ConsumerOffset(Base):
    """The next offset to process per partition, written in each batch's transaction."""

    __tablename__ = "consumer_offsets"
    consumer_group: Mapped[str] = mapped_column(Text, primary_key=True)
    topic: Mapped[str] = mapped_column(Text, primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_offset: Mapped[int] = mapped_column(BigInteger)
    received: Mapped[int] = mapped_column(BigInteger, default=0)
    accepted: Mapped[int] = mapped_column(BigInteger, default=0)
    duplicates: Mapped[int] = mapped_column(BigInteger, default=0)
    dead_lettered: Mapped[int] = mapped_column(BigInteger, default=0)


class DeadLetter(Base):
    __tablename__ = "dead_letters"
    topic: Mapped[str] = mapped_column(Text, primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    offset: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    organization_id: Mapped[str | None] = mapped_column(Text)
    code: Mapped[str] = mapped_column(Text)
    detail: Mapped[str] = mapped_column(Text)
    key: Mapped[bytes | None] = mapped_column(LargeBinary)
    value: Mapped[bytes | None] = mapped_column(LargeBinary)


class DedupConflict(Base):
    """A re-sent record whose payload differs from the event already counted under its id."""

    __tablename__ = "dedup_conflicts"
    topic: Mapped[str] = mapped_column(Text, primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    offset: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    organization_id: Mapped[str] = mapped_column(Text)
    dedup_key: Mapped[str] = mapped_column(Text)
    customer_id: Mapped[str] = mapped_column(Text)
    event_type: Mapped[str] = mapped_column(Text)
    event_time: Mapped[datetime] = mapped_column(TS)
    properties: Mapped[dict[str, Any]] = mapped_column(JSONB)
    recorded_at: Mapped[datetime] = mapped_column(TS, server_default=text("now()"))
    __table_args__ = (Index("dedup_conflicts_event", "organization_id", "dedup_key"),)


class Invoice(Base):
    __tablename__ = "invoices"
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    organization_id: Mapped[str] = mapped_column(Text)
    number: Mapped[str | None] = mapped_column(Text)
    customer_id: Mapped[str] = mapped_column(Text)
    subscription_id: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    currency: Mapped[str] = mapped_column(String(3))
    period_start: Mapped[datetime] = mapped_column(TS)
    period_end: Mapped[datetime] = mapped_column(TS)
    issued_at: Mapped[datetime | None] = mapped_column(TS)
    due_at: Mapped[datetime | None] = mapped_column(TS)
    # A draft the close wrote in its organization's grace period: when the scheduler may issue it.
    issue_after: Mapped[datetime | None] = mapped_column(TS)
    subtotal_minor: Mapped[int] = mapped_column(BigInteger)
    total_minor: Mapped[int] = mapped_column(BigInteger)
    # invoicing.lifecycle.BillingReason: "period" (a period's close), "opening" (the first period's
    # flat fees billed in advance), "reissue" (replaces the voided invoice `replaces_invoice_id`).
    billing_reason: Mapped[str] = mapped_column(Text, server_default=text("'period'"))
    replaces_invoice_id: Mapped[str | None] = mapped_column(Text, ForeignKey("invoices.id", name="invoice_replaces"))
    __table_args__ = (
        Index(
            "invoice_period",
            "organization_id",
            "subscription_id",
            "period_start",
            "billing_reason",
            unique=True,
            postgresql_where=text("billing_reason <> 'reissue'"),
        ),
        UniqueConstraint("replaces_invoice_id", name="invoice_replaced_once"),
        CheckConstraint("billing_reason IN ('period', 'opening', 'reissue')", name="invoice_billing_reason"),
        CheckConstraint(
            "(billing_reason = 'reissue') = (replaces_invoice_id IS NOT NULL)", name="invoice_reissue_link"
        ),
        UniqueConstraint("organization_id", "number", name="invoice_number"),
        CheckConstraint("status IN ('draft','issued','paid','void','uncollectible')", name="invoice_status"),
        CheckConstraint(
            "number IS NOT NULL OR (status IN ('draft', 'void') AND issued_at IS NULL)", name="invoice_numbered"
        ),
        CheckConstraint("total_minor = subtotal_minor", name="invoice_total"),
        CheckConstraint("issue_after IS NULL OR status = 'draft'", name="invoice_issue_after_draft"),
        ForeignKeyConstraint(
            ["organization_id", "subscription_id"],
            ["subscriptions.organization_id", "subscriptions.id"],
        ),
        Index("ix_invoices_customer", "organization_id", "customer_id"),
        # Unpaid invoices by due date, for the scheduler's overdue job; paid ones drop out of it.
        Index("ix_invoices_unpaid_due", "due_at", postgresql_where=text("status = 'issued'")),
        # Drafts waiting for their grace period, for the scheduler's issue_drafts job.
        Index("ix_invoices_drafts_due", "issue_after", postgresql_where=text("status = 'draft'")),
    )


class InvoiceLine(Base):
    __tablename__ = "invoice_lines"
    invoice_id: Mapped[str] = mapped_column(Text, primary_key=True)
    line_key: Mapped[str] = mapped_column(Text, primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    charge: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text)
    quantity: Mapped[Decimal] = mapped_column(Numeric)
    amount: Mapped[Decimal] = mapped_column(Numeric)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    service_start: Mapped[datetime] = mapped_column(TS)
    service_end: Mapped[datetime] = mapped_column(TS)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    __table_args__ = (
        ForeignKeyConstraint(["invoice_id"], ["invoices.id"], ondelete="CASCADE"),
        UniqueConstraint("invoice_id", "position", name="invoice_line_position"),
    )


class InvoiceSequence(Base):
    """Gapless invoice numbers: bumped in the same transaction that issues an invoice."""

    __tablename__ = "invoice_sequences"
    organization_id: Mapped[str] = mapped_column(Text, primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_number: Mapped[int] = mapped_column(BigInteger, default=0)


class InvoiceStatusChange(Base):
    __tablename__ = "invoice_status_history"
    invoice_id: Mapped[str] = mapped_column(Text, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    from_status: Mapped[str | None] = mapped_column(Text)
    to_status: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(TS)
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(Text)
    __table_args__ = (ForeignKeyConstraint(["invoice_id"], ["invoices.id"], ondelete="CASCADE"),)


class CloseFailure(Base):
    """The last error of a period that could not be closed; retried with backoff."""

    __tablename__ = "close_failures"
    organization_id: Mapped[str] = mapped_column(Text, primary_key=True)
    subscription_id: Mapped[str] = mapped_column(Text, primary_key=True)
    period_start: Mapped[datetime] = mapped_column(TS, primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer)
    error: Mapped[str] = mapped_column(Text)
    failed_at: Mapped[datetime] = mapped_column(TS)
    retry_at: Mapped[datetime] = mapped_column(TS)


# --- credit notes (migration 0004) ----------------------------------------------------------


class CreditNote(Base):
    """An issued credit note: a correction that takes `total_minor` off one issued or paid invoice.

    Amounts are positive minor units: the sign is implied (a credit note only ever subtracts),
    so `amount due = invoice total − credits issued before payment`. Credit notes are final
    once written; nothing updates or deletes them.

    The invoice's own row is never written (issued invoices are immutable), so the caps live
    here as a ledger: `credited_before_minor` is the sum of the invoice's earlier credit notes
    and `invoice_total_minor` a copy of its total, both read under the invoice's row lock. The
    CHECK keeps every note within the invoice total, and the unique (invoice, credited_before)
    makes two writers that started from the same balance collide instead of both committing.
    """

    __tablename__ = "credit_notes"
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    organization_id: Mapped[str] = mapped_column(Text)
    invoice_id: Mapped[str] = mapped_column(Text)
    number: Mapped[str] = mapped_column(Text)
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[datetime] = mapped_column(TS)
    # True when the invoice was already paid: the credit is then owed back to the customer
    # and leaves the invoice's amount due as it was when paid.
    after_payment: Mapped[bool] = mapped_column()
    invoice_total_minor: Mapped[int] = mapped_column(BigInteger)
    credited_before_minor: Mapped[int] = mapped_column(BigInteger)
    total_minor: Mapped[int] = mapped_column(BigInteger)
    __table_args__ = (
        ForeignKeyConstraint(["invoice_id"], ["invoices.id"]),
        ForeignKeyConstraint(["organization_id"], ["organizations.id"]),
        UniqueConstraint("organization_id", "number", name="credit_note_number"),
        UniqueConstraint("invoice_id", "credited_before_minor", name="credit_note_chain"),
        UniqueConstraint("id", "invoice_id", name="credit_note_invoice"),
        CheckConstraint("total_minor > 0", name="credit_note_positive"),
        CheckConstraint(
            "credited_before_minor >= 0 AND credited_before_minor + total_minor <= invoice_total_minor",
            name="credit_note_within_invoice",
        ),
        CheckConstraint("btrim(reason) <> ''", name="credit_note_reason"),
    )


class CreditNoteLine(Base):
    """One line of a credit note: part of an invoice line (`line_key`), or an amount credit (NULL key).

    A line credit carries the same ledger as its note, per invoice line: the line's amount and
    what earlier notes credited on it, with a CHECK that the line is never credited beyond its amount.
    """

    __tablename__ = "credit_note_lines"
    credit_note_id: Mapped[str] = mapped_column(Text, primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    invoice_id: Mapped[str] = mapped_column(Text)
    line_key: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    line_amount_minor: Mapped[int | None] = mapped_column(BigInteger)
    line_credited_before_minor: Mapped[int | None] = mapped_column(BigInteger)
    __table_args__ = (
        ForeignKeyConstraint(
            ["credit_note_id", "invoice_id"], ["credit_notes.id", "credit_notes.invoice_id"], ondelete="CASCADE"
        ),
        ForeignKeyConstraint(["invoice_id", "line_key"], ["invoice_lines.invoice_id", "invoice_lines.line_key"]),
        UniqueConstraint("credit_note_id", "line_key", name="credit_note_line_once"),
        UniqueConstraint("invoice_id", "line_key", "line_credited_before_minor", name="credit_note_line_chain"),
        CheckConstraint("amount_minor > 0", name="credit_note_line_positive"),
        CheckConstraint(
            "(line_key IS NULL AND line_amount_minor IS NULL AND line_credited_before_minor IS NULL) OR "
            # IS NOT NULL spelled out: a NULL inside the comparisons would make the CHECK pass.
            "(line_key IS NOT NULL AND line_amount_minor IS NOT NULL AND line_credited_before_minor IS NOT NULL "
            "AND line_credited_before_minor >= 0 AND line_credited_before_minor + amount_minor <= line_amount_minor)",
            name="credit_note_line_within_line",
        ),
    )


class CreditNoteSequence(Base):
    """Gapless credit note numbers, a series of their own (see invoicing.numbering)."""

    __tablename__ = "credit_note_sequences"
    organization_id: Mapped[str] = mapped_column(Text, primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_number: Mapped[int] = mapped_column(BigInteger, default=0)
