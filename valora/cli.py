"""`valora`: the command-line shell around the packages.

Every failure prints one line to stderr and exits non-zero (valora/cli_errors.py has
the table); VALORA_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from schemas.errors import InvalidInput
from valora.cli_api import add_api_parsers
from valora.cli_billing import add_billing_parsers
from valora.cli_common import (
    connect_engine,
    load_settings,
    now_utc,
    parse_time,
    positive_int,
    positive_seconds,
    resolve_bootstrap,
    resolve_database_url,
)
from valora.cli_errors import OneLineParser, run_guarded
from valora.cli_events import add_events_parsers
from valora.logs import console_logging
from valora.progress import Progress

EXIT_ERROR = 1
CLOSE_BATCH = 2000  # periods claimed per close transaction: measured ~12% faster than 500 (bench close)
MAX_BATCH = 100_000
MAX_DEMO_EVENTS = 10_000_000
# Below ~10,000 events the pipeline bench measures the worker's start-up, not its throughput.
MIN_BENCH_EVENTS = 10_000
MAX_BENCH_EVENTS = 10_000_000
MAX_BENCH_SUBSCRIPTIONS = 10_000_000


# --- commands -----------------------------------------------------------------------------


def cmd_dev(args: argparse.Namespace) -> int:
    from valora import devservices as ds

    settings = load_settings()
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

    engine = make_engine(resolve_database_url(load_settings()))
    try:
        before, after = upgrade(engine)
    finally:
        engine.dispose()
    print(f"database schema at {after}" + ("" if before == after else f" (was {before or 'empty'})"))
    return 0


def cmd_catalog(args: argparse.Namespace) -> int:
    from invoicing.catalog import apply_catalog, parse_catalog, read_catalog_file

    catalog = parse_catalog(read_catalog_file(Path(args.file)))
    counts = apply_catalog(connect_engine(load_settings()), catalog)
    print("applied " + ", ".join(f"{n} {name}" for name, n in counts.items()))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from streams.worker import WorkerConfig, run_worker

    settings = load_settings()
    database_url = resolve_database_url(settings)
    connect_engine(settings).dispose()  # refuses an out-of-date schema before anything is consumed
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
        reset_offsets=args.reset_offsets == "earliest",
        session_timeout_ms=settings.session_timeout_ms,
        data_dir=str(settings.state_dir / "worker"),
        log_level=settings.log_level,
    )
    from valora.telemetry import worker_listener

    listener = None
    if settings.metrics_port is not None:
        listener = worker_listener(settings.metrics_addr, settings.metrics_port, cfg.bootstrap, database_url)
    progress = Progress("worker") if args.until_idle else None
    console_logging(settings.log_level, progress)
    try:
        summary = run_worker(
            cfg, serve=listener, live=(lambda line: progress.update(0, line)) if progress else None
        )
    finally:
        if progress is not None:
            progress.close()
    if args.until_idle:
        print("worker idle: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.items())))
    return 0


def cmd_close(args: argparse.Namespace) -> int:
    """Close what is due; exits non-zero while any period of the run's scope is failing (listed on stderr)."""
    from invoicing.close import close_due
    from invoicing.close_safety import check_as_of, outstanding_failures, retry_now

    settings = load_settings()
    now = now_utc()
    as_of = check_as_of(args.as_of or now, now, settings.future_tolerance, allow_future=args.allow_future)
    engine = connect_engine(settings)
    if args.org is not None:
        from invoicing.lookup import require_organization

        require_organization(engine, args.org)
    if args.retry_failed:
        retry_now(engine, args.org)
    summary = close_due(
        engine, as_of=as_of, grace=settings.late_grace, clock=lambda: as_of, organization=args.org, limit=args.batch
    )
    failing = outstanding_failures(engine, args.org)
    print(
        f"closed {summary.invoices} period(s) as of {as_of.isoformat()}"
        + (f"; {len(failing)} period(s) failing, see close_failures" if failing else "")
    )
    for failure in failing:
        print(f"  failed: {failure.line()}", file=sys.stderr)
    return EXIT_ERROR if failing else 0


def cmd_scheduler(args: argparse.Namespace) -> int:
    import signal

    from prometheus_client import CollectorRegistry

    from invoicing.metrics import SchedulerMetrics
    from invoicing.scheduler import Scheduler, SchedulerConfig
    from valora import telemetry as t

    settings = load_settings()
    registry = CollectorRegistry()
    metrics = SchedulerMetrics(registry)
    cfg = SchedulerConfig(
        tick_s=args.tick, batch_size=args.batch, late_grace=settings.late_grace, job_budget_s=args.budget
    )
    scheduler = Scheduler(connect_engine(settings), cfg, metrics, now_utc)
    if settings.metrics_port is not None:  # ready: the database answers and the run loop steps
        checks = {"database": t.database_check(resolve_database_url(settings))}
        health = t.Health(heartbeat=lambda: scheduler.heartbeat, stall_after_s=scheduler.stall_after_s, checks=checks)
        t.serve_metrics(settings.metrics_addr, settings.metrics_port, registry, health)
    console_logging(settings.log_level)
    stopped_by: list[str] = []

    def stop(signum: int, _frame: object) -> None:
        stopped_by.append(signal.Signals(signum).name)
        scheduler.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logging.getLogger("valora.scheduler").info(
        "scheduler started: jobs close, issue_drafts, trials, overdue every %g s, batches of %d", args.tick, args.batch
    )
    summary = scheduler.run(once=args.once)
    why = f" ({stopped_by[0]})" if stopped_by else ""
    print(f"scheduler stopped{why}: {summary.invoices} invoice(s), {summary.failed} deferred")
    return 0


def cmd_quote(args: argparse.Namespace) -> int:
    from valora.quote import build_quote, read_data_file

    quote = build_quote(
        read_data_file(Path(args.plan)),
        read_data_file(Path(args.usage)) if args.usage else {},
        args.period_start,
        args.period_end,
        args.active_from,
        args.active_until,
    )
    print(json.dumps(quote, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from valora.demo import run_demo

    return run_demo(load_settings(), events=args.events)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.kind in ("pipeline", "api") and args.events < MIN_BENCH_EVENTS:
        raise InvalidInput(
            f"--events {args.events} is too few to measure throughput (at least {MIN_BENCH_EVENTS:,}; "
            "smaller runs mostly time the worker's start-up)"
        )
    settings = load_settings()
    if args.kind == "api":
        from bench.api import run_api_bench

        result = run_api_bench(settings, events=args.events)
    elif args.kind == "pipeline":
        from bench.pipeline import run_pipeline_bench

        result = run_pipeline_bench(settings, events=args.events)
    else:
        from bench.close import run_close_bench

        result = run_close_bench(settings, subscriptions=args.subscriptions)
    print(json.dumps(result) if args.json else "\n".join(f"{k:<28} {v}" for k, v in result.items()))
    return 0


# --- parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="valora", description="Deterministic usage billing: Kafka in, invoices out.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = sub.add_parser("dev", help="embedded broker and Postgres for development")
    dev.add_argument("action", choices=["up", "down", "status"], help="start, stop, or check the services")
    dev.set_defaults(func=cmd_dev)

    db = sub.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade"], help="apply the migrations the code needs")
    db.set_defaults(func=cmd_db)

    cat = sub.add_parser("catalog", help="catalog as code")
    cat.add_argument("action", choices=["apply"], help="create or update everything the file describes")
    cat.add_argument("file", help="catalog file: JSON, or YAML by its .yaml/.yml extension")
    cat.set_defaults(func=cmd_catalog)

    worker = sub.add_parser("worker", help="run the stream worker (Faust)")
    worker.add_argument("--until-idle", action="store_true", help="exit once everything present at start is processed")
    worker.add_argument(
        "--reset-offsets",
        choices=["earliest"],
        help="read partitions whose stored offset the log no longer holds from the log start (see ARCHITECTURE.md)",
    )
    worker.set_defaults(func=cmd_worker)

    close = sub.add_parser("close", help="close ended billing periods and write invoices")
    close.add_argument("--as-of", type=parse_time, default=None, help="RFC 3339 time (default: now)")
    close.add_argument("--org", default=None, help="only this organization")
    close.add_argument(
        "--batch",
        type=positive_int(MAX_BATCH),
        default=CLOSE_BATCH,
        help=f"periods per transaction, 1 to {MAX_BATCH:,} (default {CLOSE_BATCH})",
    )
    close.add_argument(
        "--allow-future", action="store_true", help="simulation: accept an --as-of later than the real clock"
    )
    close.add_argument("--retry-failed", action="store_true", help="retry failing periods now, not after the backoff")
    close.set_defaults(func=cmd_close)

    sched = sub.add_parser("scheduler", help="run the period close continuously (safe to run several)")
    sched.add_argument(
        "--tick", type=positive_seconds(3600), default=10.0, help="seconds between runs (default 10, at most 3600)"
    )
    sched.add_argument(
        "--batch",
        type=positive_int(MAX_BATCH),
        default=500,
        help=f"periods claimed per transaction, 1 to {MAX_BATCH:,} (default 500)",
    )
    sched.add_argument(
        "--budget", type=positive_seconds(3600), default=50.0, help="seconds one job run may take (default 50)"
    )
    sched.add_argument("--once", action="store_true", help="run the jobs once and exit")
    sched.set_defaults(func=cmd_scheduler)

    add_billing_parsers(sub)
    add_events_parsers(sub)
    add_api_parsers(sub)

    quote = sub.add_parser("quote", help="price a plan offline")
    quote.add_argument("--plan", required=True, help="plan file (JSON, or YAML by its .yaml/.yml extension)")
    quote.add_argument("--usage", help="usage file: meter key -> quantity (JSON or YAML; default: no usage)")
    quote.add_argument("--period-start", type=parse_time, required=True, help="RFC 3339 start of the period")
    quote.add_argument("--period-end", type=parse_time, required=True, help="RFC 3339 end of the period (exclusive)")
    quote.add_argument("--active-from", type=parse_time, help="RFC 3339 start of service, to prorate flat fees")
    quote.add_argument("--active-until", type=parse_time, help="RFC 3339 end of service, to prorate flat fees")
    quote.set_defaults(func=cmd_quote)

    bench = sub.add_parser("bench", help="benchmarks (figures and ratios from one run)")
    bench.add_argument(
        "kind", choices=["pipeline", "close", "api"], help="worker throughput, invoices per second, or the HTTP API"
    )
    bench.add_argument(
        "--events",
        type=positive_int(MAX_BENCH_EVENTS),
        default=200_000,
        help=f"pipeline and api: events to publish, {MIN_BENCH_EVENTS:,} to {MAX_BENCH_EVENTS:,} (default 200,000)",
    )
    bench.add_argument(
        "--subscriptions",
        type=positive_int(MAX_BENCH_SUBSCRIPTIONS),
        default=100_000,
        help=f"close: subscriptions to invoice, 1 to {MAX_BENCH_SUBSCRIPTIONS:,} (default 100,000)",
    )
    bench.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    bench.set_defaults(func=cmd_bench)

    demo = sub.add_parser("demo", help="the whole pipeline on the embedded services")
    demo.add_argument(
        "--events",
        type=positive_int(MAX_DEMO_EVENTS),
        default=5000,
        help=f"events to publish, 1 to {MAX_DEMO_EVENTS:,} (default 5000)",
    )
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return run_guarded(func, args)


if __name__ == "__main__":
    sys.exit(main())
