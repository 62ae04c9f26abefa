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
from pathlib import Path

from schemas.errors import InvalidInput, ValoraError
from valora.cli_api import add_api_parsers
from valora.cli_billing import add_billing_parsers
from valora.cli_common import (
    CliError,
    connect_engine,
    load_settings,
    now_utc,
    parse_time,
    resolve_bootstrap,
    resolve_database_url,
)

EXIT_ERROR = 1
CLOSE_BATCH = 2000  # periods claimed per close transaction: measured ~12% faster than 500 (bench close)


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
    )
    from valora.telemetry import worker_listener

    listener = None
    if settings.metrics_port is not None:
        listener = worker_listener(settings.metrics_addr, settings.metrics_port, cfg.bootstrap, database_url)
    summary = run_worker(cfg, serve=listener)
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
    signal.signal(signal.SIGTERM, lambda *_: scheduler.stop_event.set())
    summary = scheduler.run(once=args.once)
    print(f"scheduler stopped: {summary.invoices} invoice(s), {summary.failed} deferred")
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

    return run_demo(load_settings(), events=args.events)


def cmd_bench(args: argparse.Namespace) -> int:
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
    worker.add_argument(
        "--reset-offsets",
        choices=["earliest"],
        help="read partitions whose stored offset the log no longer holds from the log start (see ARCHITECTURE.md)",
    )
    worker.set_defaults(func=cmd_worker)

    close = sub.add_parser("close", help="close ended billing periods and write invoices")
    close.add_argument("--as-of", type=parse_time, default=None, help="RFC 3339 time (default: now)")
    close.add_argument("--org", default=None, help="only this organization")
    close.add_argument("--batch", type=int, default=CLOSE_BATCH, help="periods per transaction")
    close.add_argument(
        "--allow-future", action="store_true", help="simulation: accept an --as-of later than the real clock"
    )
    close.add_argument("--retry-failed", action="store_true", help="retry failing periods now, not after the backoff")
    close.set_defaults(func=cmd_close)

    sched = sub.add_parser("scheduler", help="run the period close continuously (safe to run several)")
    sched.add_argument("--tick", type=float, default=10.0, help="seconds between runs (default 10)")
    sched.add_argument("--batch", type=int, default=500, help="periods claimed per transaction (default 500)")
    sched.add_argument("--budget", type=float, default=50.0, help="seconds one job run may take (default 50)")
    sched.add_argument("--once", action="store_true", help="run the jobs once and exit")
    sched.set_defaults(func=cmd_scheduler)

    add_billing_parsers(sub)
    add_api_parsers(sub)

    quote = sub.add_parser("quote", help="price a plan offline")
    quote.add_argument("--plan", required=True)
    quote.add_argument("--usage")
    quote.add_argument("--period-start", type=parse_time, required=True)
    quote.add_argument("--period-end", type=parse_time, required=True)
    quote.add_argument("--active-from", type=parse_time)
    quote.add_argument("--active-until", type=parse_time)
    quote.set_defaults(func=cmd_quote)

    bench = sub.add_parser("bench", help="benchmarks (figures and ratios from one run)")
    bench.add_argument("kind", choices=["pipeline", "close", "api"])
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

    from valora.service_probes import ServiceError

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
