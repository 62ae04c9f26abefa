"""Draft grace periods against a real Postgres: the close writes drafts, the issue_drafts job issues them."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from invoicing import models as m
from invoicing.catalog import InvalidCatalog, apply_catalog, parse_catalog
from invoicing.close import close_due
from invoicing.commands import ConcurrentUpdate, issue_due_drafts, issue_invoice, void_invoice
from invoicing.db import MIGRATIONS, head_revision, make_engine, upgrade
from invoicing.lifecycle import IllegalTransition
from invoicing.metrics import SchedulerMetrics
from invoicing.scheduler import Scheduler, SchedulerConfig
from tests.invoicing.conftest import history_rows

pytestmark = pytest.mark.integration

MARCH_CLOSE = datetime(2026, 3, 1, 2, tzinfo=UTC)  # January and February are both due
GRACE = timedelta(hours=1)
SUBS = ("s2", "s10", "s1")  # text order s1 < s10 < s2, unlike the file's order


def _catalog(grace: dict[str, str | int | None]) -> dict[str, Any]:
    orgs = list(grace)
    return {
        "organizations": [
            {"id": o, "name": o.title(), "currency": "EUR"} | ({} if g is None else {"draft_grace": g})
            for o, g in grace.items()
        ],
        "plans": [
            {
                "organization": o,
                "code": "p",
                "currency": "EUR",
                "interval": "month",
                "charges": [{"key": "base", "model": "flat", "amount": "10"}],
            }
            for o in orgs
        ],
        "customers": [{"organization": o, "id": "c", "name": "C"} for o in orgs],
        "subscriptions": [
            {"organization": o, "id": s, "customer": "c", "plan": "p", "start": "2026-01-01T00:00:00Z"}
            for o in orgs
            for s in SUBS
        ],
    }


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """Organizations `plain` (no grace), `alpha` (1h) and `beta` (3600 s), three subscriptions each."""
    eng = make_engine(database_url, pool_size=8)
    try:
        upgrade(eng)
        apply_catalog(eng, parse_catalog(_catalog({"plain": None, "alpha": "1h", "beta": 3600})))
        yield eng
    finally:
        eng.dispose()


def _close(engine: Engine, at: datetime = MARCH_CLOSE) -> int:
    return close_due(engine, as_of=at, grace=timedelta(hours=1), clock=lambda: at).invoices


def _invoices(engine: Engine, org: str) -> list[m.Invoice]:
    """The organization's invoices in the documented numbering order: period start, then subscription."""
    with Session(engine) as session:
        return list(
            session.scalars(
                select(m.Invoice)
                .where(m.Invoice.organization_id == org)
                .order_by(m.Invoice.period_start, m.Invoice.subscription_id)
            )
        )


def _history(engine: Engine, invoice_id: str) -> list[tuple[str | None, str, str, str]]:
    return [(src, dst, actor, reason) for _, src, dst, actor, reason in history_rows(engine, invoice_id)]


def _scheduler(engine: Engine, at: datetime, batch: int = 2) -> tuple[Scheduler, CollectorRegistry]:
    registry = CollectorRegistry()
    cfg = SchedulerConfig(batch_size=batch, job_budget_s=120)
    return Scheduler(engine, cfg, SchedulerMetrics(registry), lambda: at), registry


def test_without_a_grace_the_close_issues_and_numbers_at_once(engine: Engine) -> None:
    assert _close(engine) == 18
    invoices = _invoices(engine, "plain")
    assert [i.number for i in invoices] == [f"PLAIN-2026-{n:06d}" for n in range(1, 7)]
    assert {(i.status, i.issued_at, i.issue_after) for i in invoices} == {("issued", MARCH_CLOSE, None)}
    assert {i.due_at for i in invoices} == {MARCH_CLOSE + timedelta(days=30)}
    assert _history(engine, invoices[0].id) == [(None, "issued", "close", "period closed")]


def test_with_a_grace_the_close_writes_unnumbered_drafts(engine: Engine) -> None:
    _close(engine)
    for org in ("alpha", "beta"):
        invoices = _invoices(engine, org)
        assert len(invoices) == 6
        assert {(i.status, i.number, i.issued_at, i.due_at) for i in invoices} == {("draft", None, None, None)}
        assert {i.issue_after for i in invoices} == {MARCH_CLOSE + GRACE}
        assert _history(engine, invoices[0].id) == [(None, "draft", "close", "period closed")]
    with Session(engine) as session:
        sequences = session.scalars(select(m.InvoiceSequence.organization_id)).all()
    assert sequences == ["plain"]  # drafts take no number


def test_the_job_waits_for_the_grace_then_issues_in_order(engine: Engine) -> None:
    _close(engine)
    early, _ = _scheduler(engine, MARCH_CLOSE + GRACE - timedelta(seconds=1))
    assert early.run_issue_drafts_job() == 0
    assert {i.status for i in _invoices(engine, "alpha")} == {"draft"}

    at = MARCH_CLOSE + GRACE
    scheduler, registry = _scheduler(engine, at)
    assert scheduler.run_issue_drafts_job() == 12
    for org, prefix in (("alpha", "ALPHA"), ("beta", "BETA")):
        invoices = _invoices(engine, org)
        # January's three before February's, each month's in subscription id order.
        assert [(i.period_start.month, i.subscription_id) for i in invoices] == [
            (month, s) for month in (1, 2) for s in sorted(SUBS)
        ]
        assert [i.number for i in invoices] == [f"{prefix}-2026-{n:06d}" for n in range(1, 7)]
        assert {(i.status, i.issued_at, i.due_at, i.issue_after) for i in invoices} == {
            ("issued", at, at + timedelta(days=30), None)
        }
        assert _history(engine, invoices[-1].id) == [
            (None, "draft", "close", "period closed"),
            ("draft", "issued", "scheduler", "draft grace period over"),
        ]
    text = generate_latest(registry).decode()
    assert 'valora_scheduler_batch_processed_total{job="issue_drafts"} 12.0' in text
    assert 'valora_scheduler_job_runs_total{job="issue_drafts"} 1.0' in text
    assert scheduler.run_issue_drafts_job() == 0


def test_a_draft_issued_by_hand_is_not_issued_again_and_numbering_stays_gapless(engine: Engine) -> None:
    _close(engine)
    last = _invoices(engine, "alpha")[-1]
    early = MARCH_CLOSE + timedelta(minutes=10)
    assert issue_invoice(engine, last.id, now=early, actor="ops", reason="reviewed")["number"] == "ALPHA-2026-000001"

    assert issue_due_drafts(engine, now=MARCH_CLOSE + GRACE, limit=4) == 11
    invoices = _invoices(engine, "alpha")
    assert [i.number for i in invoices] == [f"ALPHA-2026-{n:06d}" for n in (2, 3, 4, 5, 6, 1)]
    assert (invoices[-1].issued_at, invoices[-1].issue_after) == (early, None)
    assert _history(engine, last.id) == [
        (None, "draft", "close", "period closed"),
        ("draft", "issued", "ops", "reviewed"),
    ]


def test_a_voided_draft_never_gets_a_number(engine: Engine) -> None:
    _close(engine)
    first = _invoices(engine, "beta")[0]
    void_invoice(engine, first.id, now=MARCH_CLOSE, actor="ops", reason="wrong plan")

    assert issue_due_drafts(engine, now=MARCH_CLOSE + GRACE) == 11
    invoices = _invoices(engine, "beta")
    assert (invoices[0].status, invoices[0].number, invoices[0].issue_after) == ("void", None, None)
    assert [i.number for i in invoices[1:]] == [f"BETA-2026-{n:06d}" for n in range(1, 6)]
    assert _history(engine, first.id)[-1] == ("draft", "void", "ops", "wrong plan")


def _seed_drafts(engine: Engine, database_url: str, per_org: int) -> None:
    """`per_org` more subscriptions in alpha and beta; January closed into drafts (3 + `per_org` per org)."""
    with psycopg.connect(database_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO subscriptions (organization_id, id, customer_id, plan_code, start_at, billing_anchor, "
            "next_period_start, next_close_at, close_attempts) SELECT o, 'x' || i, 'c', 'p', '2026-01-01Z', "
            "'2026-01-01Z', '2026-01-01Z', '2026-02-01Z', 0 FROM unnest(%s::text[]) o, generate_series(1, %s) i",
            (["alpha", "beta"], per_org),
        )
    _close(engine, datetime(2026, 2, 1, 2, tzinfo=UTC))


def _numbers(engine: Engine) -> dict[str, list[int]]:
    with Session(engine) as session:
        rows = session.execute(select(m.Invoice.organization_id, m.Invoice.number).where(m.Invoice.number.is_not(None)))
        out: dict[str, list[int]] = defaultdict(list)
        for org, number in rows:
            out[org].append(int(str(number).rsplit("-", 1)[1]))
    return {org: sorted(ns) for org, ns in out.items()}


def test_racing_jobs_and_hand_issues_issue_each_draft_once_with_gapless_numbers(
    engine: Engine, database_url: str
) -> None:
    _seed_drafts(engine, database_url, 300)
    at = datetime(2026, 2, 1, 3, tzinfo=UTC)
    hand = [i.id for i in _invoices(engine, "beta")[::10]]
    barrier = threading.Barrier(3)
    results: list[object] = []

    def job() -> None:
        barrier.wait()
        results.append(issue_due_drafts(engine, now=at, limit=25))

    def by_hand() -> None:
        barrier.wait()
        for invoice_id in hand:
            try:
                issue_invoice(engine, invoice_id, now=at, actor="ops", reason="early")
                results.append(invoice_id)
            except (ConcurrentUpdate, IllegalTransition):  # a job issued it first
                pass

    threads = [threading.Thread(target=target) for target in (job, job, by_hand)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)

    assert sum(r for r in results if isinstance(r, int)) + sum(isinstance(r, str) for r in results) == 606
    assert _numbers(engine) == {"alpha": list(range(1, 304)), "beta": list(range(1, 304)), "plain": [1, 2, 3]}
    with Session(engine) as session:
        issues = session.execute(
            select(m.InvoiceStatusChange.invoice_id).where(
                m.InvoiceStatusChange.from_status == "draft", m.InvoiceStatusChange.to_status == "issued"
            )
        ).scalars()
        # Each draft was issued exactly once, by a job or by hand.
        assert sorted(issues) == sorted(i.id for org in ("alpha", "beta") for i in _invoices(engine, org))


@pytest.mark.parametrize("bad", ["1.5h", "2 days", "-1", -60, "400d", True])
def test_the_catalog_rejects_a_bad_duration_naming_the_organization(bad: object) -> None:
    with pytest.raises(InvalidCatalog) as err:
        parse_catalog(_catalog({"plain": None, "beta": bad}))  # type: ignore[dict-item]
    message = str(err.value)
    assert message.startswith("organization 'beta' (organizations[1]): draft_grace: ")
    assert "'90s', '15m', '1h', '2d'" in message and "\n" not in message


@pytest.mark.parametrize(("value", "seconds"), [("0", 0), ("3600", 3600), ("90s", 90), ("15m", 900), ("2d", 172800)])
def test_the_catalog_reads_durations_as_seconds(value: str, seconds: int) -> None:
    assert parse_catalog(_catalog({"alpha": value})).organizations[0].draft_grace == seconds


def test_migration_0003_round_trips_and_keeps_existing_rows_issued_at_once(engine: Engine) -> None:
    _close(engine)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    for target in ("0002", "head"):
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            (command.downgrade if target == "0002" else command.upgrade)(cfg, target)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head_revision()
        # The downgrade dropped the grace; every organization is back to issuing at once.
        assert set(conn.execute(text("SELECT draft_grace_s FROM organizations")).scalars()) == {0}
