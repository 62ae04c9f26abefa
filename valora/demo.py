"""`valora demo`: the main job from nothing, on the embedded services by default.

Starts (or reuses) the dev services, recreates a `valora_demo` database (`<configured>_demo`), applies
the sample catalog, publishes a few thousand January 2026 events to fresh topics of its
own (with re-sent duplicates and some bad records), runs the worker until idle,
closes January and prints the invoices and a summary.

The demo never touches the production topic names (`usage.events`, `usage.totals`, ...):
its topics are `demo.<run>.usage.events` and so on, new each run, so a re-run never
re-reads an earlier run's records into the recreated database. It writes
`<state dir>/demo.env`, the `VALORA_*` settings that point every other command at the
demo's database and topics (`. .valora/demo.env`, as the README's "Using it" says).
"""

from __future__ import annotations

import json
import random
import shlex
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from invoicing.catalog import apply_catalog, parse_catalog
from invoicing.close import close_due
from invoicing.db import make_engine, recreate_database
from invoicing.queries import list_invoices, stream_counters
from streams.publish import publish
from streams.worker import WorkerConfig, run_worker
from valora.render import invoice_table

JANUARY = datetime(2026, 1, 1, tzinfo=UTC)
CLOSE_AS_OF = datetime(2026, 2, 1, 1, 0, tzinfo=UTC)  # period end + the default 1 h grace


def demo_events(n: int, seed: int = 7) -> list[tuple[bytes, bytes]]:
    """n records for org `acme`: ~5% re-sent duplicates and ~0.5% bad records."""
    rng = random.Random(seed)
    out: list[tuple[bytes, bytes]] = []
    sent: list[bytes] = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.05 and sent:
            out.append((b"acme", rng.choice(sent)))
            continue
        if roll < 0.055:
            out.append((b"acme", _bad_record(rng, i)))
            continue
        customer = rng.choice(["cus_1", "cus_2", "cus_3"])
        start = JANUARY + timedelta(days=15) if customer == "cus_1" else JANUARY
        when = start + timedelta(seconds=rng.randrange(int((JANUARY + timedelta(days=31) - start).total_seconds())))
        if customer == "cus_2" and rng.random() < 0.5:
            body = {"type": "llm_call", "properties": {"tokens": rng.randrange(50, 4000), "model": "m1"}}
        else:
            body = {"type": "api_request", "properties": {"path": "/v1/things"}}
        value = json.dumps(
            {"id": f"evt_{i:07d}", "customer": customer, "time": when.isoformat().replace("+00:00", "Z"), **body}
        ).encode()
        sent.append(value)
        out.append((b"acme", value))
    return out


def _bad_record(rng: random.Random, i: int) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return b"{not json"
    if kind == 1:
        return json.dumps({"id": f"bad_{i}", "type": "api_request", "time": "2026-01-10T00:00:00Z"}).encode()
    if kind == 2:
        return json.dumps(
            {
                "id": f"bad_{i}",
                "type": "api_request",
                "customer": "cus_unknown",
                "time": "2026-01-10T00:00:00Z",
                "properties": {},
            }
        ).encode()
    return json.dumps(
        {
            "id": f"bad_{i}",
            "type": "llm_call",
            "customer": "cus_2",
            "time": "2026-01-10T00:00:00Z",
            "properties": {"tokens": "lots"},
        }
    ).encode()


def run_demo(settings: Any, *, events: int) -> int:
    from valora.cli_common import resolve_bootstrap, services_for

    started = time.perf_counter()
    bootstrap_given = settings.kafka_bootstrap is not None
    bootstrap, server_url = services_for(settings)
    settings = type(settings)(**{**vars(settings), "kafka_bootstrap": bootstrap})
    resolve_bootstrap(settings)
    # Named after the configured database (the dev services': `valora` -> `valora_demo`), so demos
    # pointed at different databases on one server never share one.
    database_url = recreate_database(server_url, f"{make_url(server_url).database or 'valora'}_demo")
    engine = make_engine(database_url)
    catalog = json.loads(resources.files("valora.sample").joinpath("catalog.json").read_text(), parse_float=str)
    apply_catalog(engine, parse_catalog(catalog))
    prefix = f"demo.{int(time.time())}."
    topic = f"{prefix}usage.events"
    records = demo_events(events)
    cfg = WorkerConfig(
        bootstrap=bootstrap,
        database_url=database_url,
        events_topic=topic,
        dlq_topic=f"{topic}.dlq",
        totals_topic=f"{prefix}usage.totals",
        partitions=4,
        group=f"{prefix}worker",
        until_idle=True,
        data_dir=str(settings.state_dir / "worker"),
    )
    from streams.worker import ensure_topics

    ensure_topics(bootstrap, {topic: cfg.partitions, cfg.dlq_topic: cfg.partitions})
    publish(bootstrap, topic, records)
    env_file = write_demo_env(settings.state_dir, cfg, bootstrap_given=bootstrap_given)
    run_worker(cfg)
    closed = close_due(engine, as_of=CLOSE_AS_OF, grace=settings.late_grace, clock=lambda: CLOSE_AS_OF)
    invoices = list_invoices(engine, "acme")
    counters = stream_counters(engine, topic)
    reasons = _dead_letter_reasons(engine, topic)
    engine.dispose()
    print(invoice_table(invoices))
    print()
    print(f"records in    {counters['received']:>8}   (published {len(records)} to {topic})")
    print(f"accepted      {counters['accepted']:>8}")
    print(f"duplicates    {counters['duplicates']:>8}")
    print(
        f"rejected      {counters['dead_lettered']:>8}   " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
    )
    print(f"invoices      {closed.invoices:>8}   (January 2026, closed as of {CLOSE_AS_OF.isoformat()})")
    print(f"time taken    {time.perf_counter() - started:>8.1f} s")
    print()
    print(f"Explore the demo's data: `. {_shown(env_file)}`, then `valora invoices list --org acme`")
    print("(README, \"Using it\"); `valora dev down` stops the services.")
    return 0


def write_demo_env(state_dir: Path, cfg: WorkerConfig, *, bootstrap_given: bool) -> Path:
    """Write `demo.env`: shell exports pointing later commands at the demo's database and topics.

    The broker is named only when the user named it: the dev services' broker is found through
    their state file, which stays right when `valora dev up` moves it to another port.
    """
    settings = {
        "VALORA_DATABASE_URL": cfg.database_url,
        "VALORA_EVENTS_TOPIC": cfg.events_topic,
        "VALORA_DLQ_TOPIC": cfg.dlq_topic,
        "VALORA_TOTALS_TOPIC": cfg.totals_topic,
        "VALORA_CONSUMER_GROUP": cfg.group,
        "VALORA_TOPIC_PARTITIONS": str(cfg.partitions),
    }
    if bootstrap_given:
        settings["VALORA_KAFKA_BOOTSTRAP"] = cfg.bootstrap
    path = state_dir / "demo.env"
    state_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# Written by `valora demo`: `. " + str(path) + "` points valora at the demo's data."]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in settings.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _shown(path: Path) -> str:
    """The path relative to the working directory when it is below it (shorter to type)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _dead_letter_reasons(engine: Any, topic: str) -> Counter[str]:
    from sqlalchemy import text

    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT code, count(*) FROM dead_letters WHERE topic = :t GROUP BY code"), {"t": topic}
        )
        return Counter({code: n for code, n in rows})
