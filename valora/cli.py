"""`valora`: the command-line shell around the packages.

Every expected failure prints one line to stderr and exits non-zero; tracebacks
are for bugs only (VALORA_DEBUG=1 shows them for everything).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from schemas.errors import InvalidInput, ValoraError

EXIT_ERROR, EXIT_USAGE = 1, 2
CLOSE_BATCH = 2000  # periods claimed per close transaction: measured ~12% faster than 500 (bench close)


class CliError(Exception):
    """A one-line failure for the user."""


def _now() -> datetime:
    return datetime.now(UTC)


def parse_time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an RFC 3339 time (e.g. 2026-02-01T00:00:00Z)") from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r} needs a timezone (e.g. a trailing Z)")
    return parsed.astimezone(UTC)


# --- resolving services -------------------------------------------------------------------


def _settings() -> Any:
    from valora.settings import Settings

    return Settings.from_env()


def resolve_database_url(settings: Any) -> str:
    if settings.database_url:
        return str(settings.database_url)
    from valora.devservices import read_state

    state = read_state(settings.state_dir)
    if state is None:
        raise CliError("no database configured: set VALORA_DATABASE_URL or run `valora dev up`")
    return state.database_url


def resolve_bootstrap(settings: Any, *, check: bool = True) -> str:
    from valora.devservices import broker_answers, read_state

    bootstrap = settings.kafka_bootstrap
    if not bootstrap:
        state = read_state(settings.state_dir)
        if state is None:
            raise CliError("no Kafka broker configured: set VALORA_KAFKA_BOOTSTRAP or run `valora dev up`")
        bootstrap = state.kafka_bootstrap
    if check and not broker_answers(bootstrap, timeout_s=5.0):
        raise CliError(
            f"Kafka broker at {bootstrap} does not answer (check VALORA_KAFKA_BOOTSTRAP or run `valora dev up`)"
        )
    return str(bootstrap)


def _engine(settings: Any) -> Any:
    from invoicing.db import connect

    return connect(resolve_database_url(settings))


# --- commands -----------------------------------------------------------------------------


def cmd_dev(args: argparse.Namespace) -> int:
    from valora import devservices as ds

    settings = _settings()
    if args.action == "up":
        started = ds.dev_up(settings.state_dir, database_url=settings.database_url)
        print(f"broker    {started.kafka_bootstrap}")
        print(f"postgres  {started.database_url}{'  (embedded)' if started.postgres_embedded else ''}")
        print(f"state     {settings.state_dir / 'state.json'}")
    elif args.action == "down":
        for line in ds.dev_down(settings.state_dir) or ["nothing was running"]:
            print(line)
    else:
        state, up = ds.dev_status(settings.state_dir)
        if state is None:
            print("dev services: not started (run `valora dev up`)")
            return EXIT_ERROR
        print(f"broker    {state.kafka_bootstrap}  {'up' if up['broker'] else 'DOWN'}")
        print(f"postgres  {state.database_url}  {'up' if up['postgres'] else 'DOWN'}")
        return 0 if all(up.values()) else EXIT_ERROR
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from invoicing.db import make_engine, upgrade

    engine = make_engine(resolve_database_url(_settings()))
    try:
        before, after = upgrade(engine)
    finally:
        engine.dispose()
    print(f"database schema at {after}" + ("" if before == after else f" (was {before or 'empty'})"))
    return 0


def cmd_catalog(args: argparse.Namespace) -> int:
    from invoicing.catalog import apply_catalog, parse_catalog, read_catalog_file

    catalog = parse_catalog(read_catalog_file(Path(args.file)))
    counts = apply_catalog(_engine(_settings()), catalog)
    print("applied " + ", ".join(f"{n} {name}" for name, n in counts.items()))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from streams.worker import WorkerConfig, run_worker

    settings = _settings()
    database_url = resolve_database_url(settings)
    _engine(settings).dispose()  # refuses an out-of-date schema before anything is consumed
    cfg = WorkerConfig(
        bootstrap=resolve_bootstrap(settings),
        database_url=database_url,
        events_topic=settings.events_topic,
        dlq_topic=settings.dlq_topic,
        totals_topic=settings.totals_topic,
        partitions=settings.partitions,
        group=settings.consumer_group,
        batch_max=settings.batch_max,
        future_tolerance=settings.future_tolerance,
        until_idle=args.until_idle,
        metrics_port=settings.metrics_port,
        session_timeout_ms=settings.session_timeout_ms,
    )
    summary = run_worker(cfg)
    if args.until_idle:
        print("worker idle: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.items())))
    return 0


def cmd_close(args: argparse.Namespace) -> int:
    from invoicing.close import close_due

    settings = _settings()
    as_of = args.as_of or _now()
    summary = close_due(
        _engine(settings),
        as_of=as_of,
        grace=settings.late_grace,
        clock=lambda: as_of,
        organization=args.org,
        limit=args.batch,
    )
    print(
        f"closed {summary.invoices} period(s) as of {as_of.isoformat()}"
        + (f"; {summary.failed} failed and will be retried" if summary.failed else "")
    )
    for error in summary.errors:
        print(f"  failed: {error}", file=sys.stderr)
    return 0


def cmd_scheduler(args: argparse.Namespace) -> int:
    import signal

    from prometheus_client import CollectorRegistry, start_http_server

    from invoicing.metrics import SchedulerMetrics
    from invoicing.scheduler import Scheduler, SchedulerConfig

    settings = _settings()
    registry = CollectorRegistry()
    metrics = SchedulerMetrics(registry)
    if settings.metrics_port is not None:
        start_http_server(settings.metrics_port, registry=registry)
    cfg = SchedulerConfig(
        tick_s=args.tick, batch_size=args.batch, late_grace=settings.late_grace, job_budget_s=args.budget
    )
    scheduler = Scheduler(_engine(settings), cfg, metrics, _now)
    signal.signal(signal.SIGTERM, lambda *_: scheduler.stop_event.set())
    summary = scheduler.run(once=args.once)
    print(f"scheduler stopped: {summary.invoices} invoice(s), {summary.failed} deferred")
    return 0


def cmd_invoices(args: argparse.Namespace) -> int:
    from invoicing.queries import list_invoices
    from valora.render import invoice_table

    invoices = list_invoices(_engine(_settings()), args.org, args.customer)
    if args.json:
        print(json.dumps(invoices, indent=2))
    else:
        print(invoice_table(invoices))
    return 0


INVOICE_ACTIONS = {
    "issue": "issue a draft: next gapless number, issued and due dates",
    "void": "void a draft, issued or uncollectible invoice",
    "mark-paid": "record the payment of an issued or uncollectible invoice",
    "mark-uncollectible": "write off an issued invoice",
}
DEFAULT_REASONS = {"issue": "issued by hand", "mark-paid": "payment recorded"}


def cmd_invoice_state(args: argparse.Namespace) -> int:
    from invoicing import commands

    command = {
        "issue": commands.issue_invoice,
        "void": commands.void_invoice,
        "mark-paid": commands.mark_paid,
        "mark-uncollectible": commands.mark_uncollectible,
    }[args.action]
    invoice = command(
        _engine(_settings()),
        args.invoice_id,
        now=args.at or _now(),
        actor=args.actor or f"cli:{os.environ.get('USER') or 'unknown'}",
        reason=args.reason or DEFAULT_REASONS[args.action],
    )
    if args.json:
        print(json.dumps(invoice, indent=2))
    else:
        print(f"{invoice['id']}  {invoice['number'] or '(draft)'}  {invoice['status']}")
    return 0


def cmd_invoice_show(args: argparse.Namespace) -> int:
    from invoicing.commands import get_invoice, invoice_parties
    from invoicing.html import render_invoice_html
    from valora.render import invoice_table

    engine = _engine(_settings())
    invoice = get_invoice(engine, args.invoice_id)
    if args.html:
        organization_name, customer_name = invoice_parties(engine, args.invoice_id)
        out = render_invoice_html(invoice, organization_name=organization_name, customer_name=customer_name)
    elif args.json:
        out = json.dumps(invoice, indent=2) + "\n"
    else:
        out = invoice_table([invoice]) + "\n"
    if args.out:
        Path(args.out).write_text(out, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(out)
    return 0


def _subscription_text(sub: dict[str, Any]) -> str:
    scheduled = f" (cancel scheduled for {sub['end_at']})" if sub["cancel_at_period_end"] else ""
    lines = [
        f"{sub['organization']}/{sub['id']}  {sub['status']}{scheduled}  plan {sub['plan']}  "
        f"customer {sub['customer']}",
        f"  start {sub['start_at']}  trial end {sub['trial_end'] or '-'}  end {sub['end_at'] or '-'}  "
        f"next close {sub['next_close_at'] or '-'}",
    ]
    for h in sub["status_history"]:
        lines.append(f"  {h['seq']:>3}  {h['at']}  {h['from'] or '-'} → {h['to']}  {h['actor']}: {h['reason']}")
    return "\n".join(lines)


def cmd_subscriptions(args: argparse.Namespace) -> int:
    from invoicing import subscriptions as subs

    engine = _engine(_settings())
    if args.action == "show":
        sub = subs.get_subscription(engine, args.org, args.subscription)
    else:
        if args.action == "revoke-cancel":
            command = subs.revoke_cancel
        else:
            command = subs.schedule_cancel if args.at_period_end else subs.cancel_now
        sub = command(
            engine,
            args.org,
            args.subscription,
            now=args.at or _now(),
            actor=args.actor or f"cli:{os.environ.get('USER') or 'unknown'}",
            reason=args.reason or "requested by hand",
        )
    print(json.dumps(sub, indent=2) if args.json else _subscription_text(sub))
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from invoicing.usage import late_usage, running_totals

    engine = _engine(_settings())
    if args.late:
        rows = late_usage(engine, args.org, args.customer)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                billed = r["billed_on_invoice"] or "not yet billed"
                print(f"{r['subscription']}  {r['meter']}  {r['period_start'][:10]}  {r['quantity']}  {billed}")
            print(f"{len(rows)} late usage record(s)")
        return 0
    totals = running_totals(engine, args.org, at=args.at or _now(), customer=args.customer)
    if args.json:
        print(json.dumps(totals, indent=2))
    else:
        from rating.money import format_minor

        for t in totals:
            meters = ", ".join(f"{k} {v}" for k, v in t["meters"].items()) or "no usage"
            print(
                f"{t['subscription']}  {t['customer']}  {t['period_start'][:10]} – {t['period_end'][:10]}  "
                f"{meters}  so far {format_minor(t['total_minor'], t['currency'])} {t['currency']}"
            )
    return 0


def cmd_quote(args: argparse.Namespace) -> int:
    from valora.quote import build_quote, read_json_file

    quote = build_quote(
        read_json_file(Path(args.plan)),
        read_json_file(Path(args.usage)) if args.usage else {},
        args.period_start,
        args.period_end,
        args.active_from,
        args.active_until,
    )
    print(json.dumps(quote, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from valora.demo import run_demo

    return run_demo(_settings(), events=args.events)


def cmd_bench(args: argparse.Namespace) -> int:
    settings = _settings()
    if args.kind == "pipeline":
        from bench.pipeline import run_pipeline_bench

        result = run_pipeline_bench(settings, events=args.events)
    else:
        from bench.close import run_close_bench

        result = run_close_bench(settings, subscriptions=args.subscriptions)
    print(json.dumps(result) if args.json else "\n".join(f"{k:<28} {v}" for k, v in result.items()))
    return 0


# --- parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="valora", description="Deterministic usage billing: Kafka in, invoices out.")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="embedded broker and Postgres for development")
    dev.add_argument("action", choices=["up", "down", "status"])
    dev.set_defaults(func=cmd_dev)

    db = sub.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade"])
    db.set_defaults(func=cmd_db)

    cat = sub.add_parser("catalog", help="catalog as code")
    cat.add_argument("action", choices=["apply"])
    cat.add_argument("file")
    cat.set_defaults(func=cmd_catalog)

    worker = sub.add_parser("worker", help="run the stream worker (Faust)")
    worker.add_argument("--until-idle", action="store_true", help="exit once everything present at start is processed")
    worker.set_defaults(func=cmd_worker)

    close = sub.add_parser("close", help="close ended billing periods and write invoices")
    close.add_argument("--as-of", type=parse_time, default=None, help="RFC 3339 time (default: now)")
    close.add_argument("--org", default=None, help="only this organization")
    close.add_argument("--batch", type=int, default=CLOSE_BATCH, help="periods per transaction")
    close.set_defaults(func=cmd_close)

    sched = sub.add_parser("scheduler", help="run the period close continuously (safe to run several)")
    sched.add_argument("--tick", type=float, default=10.0, help="seconds between runs (default 10)")
    sched.add_argument("--batch", type=int, default=500, help="periods claimed per transaction (default 500)")
    sched.add_argument("--budget", type=float, default=50.0, help="seconds one job run may take (default 50)")
    sched.add_argument("--once", action="store_true", help="run the jobs once and exit")
    sched.set_defaults(func=cmd_scheduler)

    inv = sub.add_parser("invoices", help="list and show invoices, and move them through their lifecycle")
    inv_actions = inv.add_subparsers(dest="action", required=True)
    inv_list = inv_actions.add_parser("list", help="an organization's invoices")
    inv_list.add_argument("--org", required=True)
    inv_list.add_argument("--customer")
    inv_list.add_argument("--json", action="store_true")
    inv_list.set_defaults(func=cmd_invoices)

    show = inv_actions.add_parser("show", help="one invoice as a table, JSON, or a standalone HTML page")
    show.add_argument("invoice_id", metavar="ID")
    show_format = show.add_mutually_exclusive_group()
    show_format.add_argument("--json", action="store_true")
    show_format.add_argument("--html", action="store_true")
    show.add_argument("--out", help="write to this file instead of stdout")
    show.set_defaults(func=cmd_invoice_show)

    for action, help_text in INVOICE_ACTIONS.items():
        change = inv_actions.add_parser(action, help=help_text)
        change.add_argument("invoice_id", metavar="ID")
        default_reason = DEFAULT_REASONS.get(action)
        change.add_argument(
            "--reason",
            required=default_reason is None,
            help="recorded in the status history" + (f" (default: {default_reason!r})" if default_reason else ""),
        )
        change.add_argument("--actor", help="who made the change (default: cli:$USER)")
        change.add_argument("--at", type=parse_time, default=None, help="RFC 3339 time of the change (default: now)")
        change.add_argument("--json", action="store_true", help="print the invoice as JSON")
        change.set_defaults(func=cmd_invoice_state)

    subs = sub.add_parser("subscriptions", help="show a subscription, cancel it now or at period end, revoke a cancel")
    subs_actions = subs.add_subparsers(dest="action", required=True)
    subs_show = subs_actions.add_parser("show", help="one subscription with its status history")
    subs_show.add_argument("org", metavar="ORG")
    subs_show.add_argument("subscription", metavar="SUB")
    subs_show.add_argument("--json", action="store_true")
    subs_show.set_defaults(func=cmd_subscriptions)
    subs_help = {
        "cancel": "cancel now (the close bills a final, prorated invoice), or with --at-period-end when it ends",
        "revoke-cancel": "keep renewing: revoke a cancel scheduled for the period's end, before that end",
    }
    for action, help_text in subs_help.items():
        change = subs_actions.add_parser(action, help=help_text)
        change.add_argument("org", metavar="ORG")
        change.add_argument("subscription", metavar="SUB")
        if action == "cancel":
            change.add_argument("--at-period-end", action="store_true", help="end at the current period's end instead")
        change.add_argument("--reason", help="recorded in the status history")
        change.add_argument("--actor", help="who made the change (default: cli:$USER)")
        change.add_argument("--at", type=parse_time, default=None, help="RFC 3339 time of the change (default: now)")
        change.add_argument("--json", action="store_true", help="print the subscription as JSON")
        change.set_defaults(func=cmd_subscriptions)

    usage = sub.add_parser("usage", help="running totals of the current period, or late usage")
    usage.add_argument("--org", required=True)
    usage.add_argument("--customer")
    usage.add_argument("--at", type=parse_time, default=None, help="the period containing this time (default: now)")
    usage.add_argument("--late", action="store_true", help="usage that arrived after its period was invoiced")
    usage.add_argument("--json", action="store_true")
    usage.set_defaults(func=cmd_usage)

    quote = sub.add_parser("quote", help="price a plan offline")
    quote.add_argument("--plan", required=True)
    quote.add_argument("--usage")
    quote.add_argument("--period-start", type=parse_time, required=True)
    quote.add_argument("--period-end", type=parse_time, required=True)
    quote.add_argument("--active-from", type=parse_time)
    quote.add_argument("--active-until", type=parse_time)
    quote.set_defaults(func=cmd_quote)

    bench = sub.add_parser("bench", help="benchmarks (figures and ratios from one run)")
    bench.add_argument("kind", choices=["pipeline", "close"])
    bench.add_argument("--events", type=int, default=200_000)
    bench.add_argument("--subscriptions", type=int, default=100_000)
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(func=cmd_bench)

    demo = sub.add_parser("demo", help="the whole pipeline on the embedded services")
    demo.add_argument("--events", type=int, default=5000)
    demo.set_defaults(func=cmd_demo)
    return parser


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _known_errors() -> tuple[type[BaseException], ...]:
    from sqlalchemy.exc import OperationalError

    from valora.devservices import ServiceError

    return (CliError, ValoraError, InvalidInput, ServiceError, OperationalError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("VALORA_DEBUG") or not isinstance(exc, _known_errors()):
            if not isinstance(exc, _known_errors()):
                print(f"valora: internal error: {_one_line(exc)}", file=sys.stderr)
            raise
        print(f"valora: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
