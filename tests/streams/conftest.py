"""Shared fixtures for the worker's fault, scale-out and conservation tests.

These run the real `valora worker` (a subprocess) against the real broker and the
real Postgres. Helpers here:

* `make_tenants` / `make_catalog`: a catalog of many organizations, each with a plan
  that has a `count` meter (`api_calls` ← `api_request`) and a `sum` meter
  (`tokens` ← `llm_call`, property `tokens`).
* `Workload`: generates valid events and re-sent duplicates and keeps the expected
  totals (unique events only), the expected counters and the number of records.
* `Stack` (fixture `stack_factory`): the environment of one test (database migrated,
  catalog applied, topics created) plus read-only queries of the worker's results.
* `WorkerPool` (fixture `workers`): worker subprocesses, always killed at teardown.
* `PacedPublisher`: produces records in small chunks from a background thread, so
  a test can act (kill, cut Postgres, add a worker) while events are still flowing.

Waiting is always `tests.conftest.wait_for` on Postgres counters: Tansu reports
high watermarks that are wrong, so nothing here relies on them.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from sqlalchemy.engine import make_url

from streams.worker import ensure_topics
from tests.conftest import wait_for
from tests.helpers import cli_env, run_cli, write_json

KV = tuple[bytes | None, bytes | None]
TotalKey = tuple[str, str, str]  # (organization, subscription, meter)

JAN = datetime(2026, 1, 1, tzinfo=UTC)
JAN_SECONDS = 31 * 24 * 3600


def rfc3339(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


# --- catalog -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    org: str
    customers: tuple[str, ...]  # customer j has subscription sub_j

    def subscription(self, customer: str) -> str:
        return "sub_" + customer.removeprefix("cus_")


def make_tenants(n: int) -> list[Tenant]:
    """`n` organizations `org00`…; even ones have two customers, odd ones one.

    Customer, subscription and event ids repeat across organizations on purpose: every
    key is scoped by the organization, so tenants must never see each other's rows.
    """
    return [Tenant(f"org{k:02d}", ("cus_1", "cus_2") if k % 2 == 0 else ("cus_1",)) for k in range(n)]


def make_catalog(tenants: Sequence[Tenant]) -> dict[str, Any]:
    catalog: dict[str, list[dict[str, Any]]] = {
        "organizations": [], "meters": [], "plans": [], "customers": [], "subscriptions": []
    }
    for t in tenants:
        catalog["organizations"].append({"id": t.org, "name": f"Tenant {t.org}", "currency": "USD"})
        catalog["meters"] += [
            {"organization": t.org, "key": "api_calls", "event_type": "api_request", "aggregation": "count"},
            {"organization": t.org, "key": "tokens", "event_type": "llm_call", "aggregation": "sum",
             "value_property": "tokens"},
        ]
        catalog["plans"].append({
            "organization": t.org, "code": "std", "currency": "USD", "interval": "month",
            "charges": [
                {"key": "base", "model": "flat", "amount": "10.00"},
                {"key": "api", "meter": "api_calls", "model": "per_unit", "unit_amount": "0.001"},
                {"key": "tok", "meter": "tokens", "model": "per_unit", "unit_amount": "0.0001"},
            ],
        })
        for cus in t.customers:
            catalog["customers"].append({"organization": t.org, "id": cus, "name": f"{t.org} {cus}"})
            catalog["subscriptions"].append({
                "organization": t.org, "id": t.subscription(cus), "customer": cus, "plan": "std",
                "start": "2026-01-01T00:00:00Z",
            })
    return catalog


# --- workload ----------------------------------------------------------------------------


@dataclass
class Sent:
    """One unique event as first published (what a re-send must not change)."""

    org: str
    event_id: str
    customer: str
    type_: str
    time: str
    tokens: Decimal | None


def native(event_id: str, customer: str, time: str, type_: str, properties: dict[str, Any]) -> bytes:
    return json.dumps(
        {"id": event_id, "type": type_, "customer": customer, "time": time, "properties": properties}
    ).encode()


@dataclass
class Workload:
    """Valid events and duplicates for a set of tenants, with the totals they must add up to."""

    tenants: Sequence[Tenant]
    seed: int = 0
    rng: random.Random = field(init=False)
    sent: list[Sent] = field(default_factory=list)
    totals: dict[TotalKey, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    records: int = 0  # every record handed out (what `received` must reach)
    accepted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    other_events: int = 0  # unique events a test added by hand (e.g. CloudEvents), not in `sent`
    _next_id: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def _new_event(self, tenant: Tenant) -> tuple[KV, Sent]:
        rng = self.rng
        self._next_id[tenant.org] += 1
        event_id = f"e{self._next_id[tenant.org]}"  # the same ids occur in every organization
        customer = rng.choice(tenant.customers)
        when = rfc3339(JAN + timedelta(seconds=rng.randrange(JAN_SECONDS)))
        sub = tenant.subscription(customer)
        if rng.random() < 0.5:
            sent = Sent(tenant.org, event_id, customer, "api_request", when, None)
            value = native(event_id, customer, when, "api_request", {"path": "/v1/x"})
            self.totals[(tenant.org, sub, "api_calls")] += 1
        else:
            tokens = Decimal(rng.randrange(1, 100_000)) / 100  # exact two-decimal amounts
            sent = Sent(tenant.org, event_id, customer, "llm_call", when, tokens)
            value = native(event_id, customer, when, "llm_call", {"tokens": float(tokens)})
            self.totals[(tenant.org, sub, "tokens")] += tokens
        return (tenant.org.encode(), value), sent

    def valid(self, n: int) -> list[KV]:
        """`n` new unique events spread over all tenants."""
        out: list[KV] = []
        for _ in range(n):
            kv, sent = self._new_event(self.rng.choice(self.tenants))
            out.append(kv)
            self.sent.append(sent)
        self.records += n
        self.accepted += n
        return out

    def resend(self, n: int) -> list[KV]:
        """`n` re-sends of events already handed out; some with a different payload (first one wins)."""
        out: list[KV] = []
        for _ in range(n):
            s = self.rng.choice(self.sent)
            if s.type_ == "llm_call" and self.rng.random() < 0.5:
                props: dict[str, Any] = {"tokens": float(s.tokens or 0) + 1000}
            else:
                props = {"tokens": float(s.tokens)} if s.tokens is not None else {"path": "/v1/x"}
            out.append((s.org.encode(), native(s.event_id, s.customer, s.time, s.type_, props)))
        self.records += n
        self.duplicates += n
        return out

    def malformed(self, n: int) -> list[KV]:
        """`n` records that must be dead-lettered (`invalid_json`), each one unique."""
        out: list[KV] = []
        for i in range(n):
            tenant = self.rng.choice(self.tenants)
            out.append((tenant.org.encode(), f'{{"id": "broken-{self.records + i}", '.encode()))
        self.records += n
        self.dead_lettered += n
        return out

    def wave(self, n_valid: int, n_dup: int, n_bad: int = 0) -> list[KV]:
        """New events, then re-sends (never before their original), with bad records anywhere."""
        records = self.valid(n_valid) + self.resend(n_dup)
        for kv in self.malformed(n_bad):
            records.insert(self.rng.randrange(len(records) + 1), kv)
        return records

    @property
    def unique_events(self) -> int:
        return len(self.sent) + self.other_events


# --- the stack under test ----------------------------------------------------------------


@dataclass
class Counters:
    received: int
    accepted: int
    duplicates: int
    dead_lettered: int


class Stack:
    """One test's environment (topics, group, database) and queries of the worker's results."""

    def __init__(self, broker: str, database_url: str, prefix: str, tmp_path: Path, **extra: str) -> None:
        self.broker, self.database_url, self.tmp_path = broker, database_url, tmp_path
        self.env = cli_env(broker, database_url, prefix, **extra)
        self.topic = self.env["VALORA_EVENTS_TOPIC"]
        self.dlq_topic = self.env["VALORA_DLQ_TOPIC"]
        self.group = self.env["VALORA_CONSUMER_GROUP"]
        url = make_url(database_url)
        self.database = url.database or ""
        self.libpq_url = database_url.replace("postgresql+psycopg://", "postgresql://", 1)

    def setup(self, catalog: dict[str, Any]) -> None:
        run_cli(["db", "upgrade"], self.env)
        run_cli(["catalog", "apply", str(write_json(self.tmp_path / "catalog.json", catalog))], self.env)
        # create the topics up front with the configured partition count (records are produced
        # before or while the worker starts, and broker auto-creation would pick its own count)
        n = int(self.env["VALORA_TOPIC_PARTITIONS"])
        ensure_topics(self.broker, {self.topic: n, self.dlq_topic: n})

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.libpq_url, autocommit=True, connect_timeout=5)

    def _query(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            return conn.execute(query, params).fetchall()

    def counters(self) -> Counters:
        [row] = self._query(
            "SELECT coalesce(sum(received), 0), coalesce(sum(accepted), 0), coalesce(sum(duplicates), 0), "
            "coalesce(sum(dead_lettered), 0) FROM consumer_offsets WHERE consumer_group = %s AND topic = %s",
            (self.group, self.topic),
        )
        return Counters(*(int(v) for v in row))

    def received(self) -> int:
        """Records the worker has committed so far (replays excluded), over all partitions."""
        return self.counters().received

    def totals(self) -> dict[TotalKey, Decimal]:
        rows = self._query(
            "SELECT organization_id, subscription_id, meter_key, sum(quantity) FROM usage_totals "
            "GROUP BY 1, 2, 3"
        )
        return {(o, s, m): Decimal(q) for o, s, m, q in rows}

    def event_count(self) -> int:
        [(n,)] = self._query("SELECT count(*) FROM events")
        return int(n)

    def event_counts_by_org(self) -> dict[str, int]:
        return {o: int(n) for o, n in self._query("SELECT organization_id, count(*) FROM events GROUP BY 1")}

    def dead_letter_sources(self) -> set[tuple[int, int]]:
        """(partition, offset) of every row in `dead_letters`."""
        rows = self._query('SELECT partition, "offset" FROM dead_letters WHERE topic = %s', (self.topic,))
        return {(int(p), int(o)) for p, o in rows}

    def partitions_used(self) -> set[int]:
        return {int(p) for (p,) in self._query("SELECT DISTINCT source_partition FROM events")}

    def wait_received(self, target: int, timeout_s: float, message: str = "") -> None:
        """Wait until every one of `target` records is accounted for in consumer_offsets."""
        last: list[int] = [0]

        def done() -> bool:
            last[0] = self.received()
            return last[0] >= target

        try:
            wait_for(done, timeout_s=timeout_s, interval_s=0.1)
        except AssertionError:
            raise AssertionError(f"{message or 'records not accounted for'}: received {last[0]} of {target} "
                                 f"after {timeout_s:g} s") from None


def read_dlq(stack: Stack, distinct: int, timeout_s: float = 30) -> list[Any]:
    """Messages on the DLQ topic, read from the start (partitions assigned, no group join)
    until `distinct` different source records (partition, offset in `valora-reason`) were seen."""
    consumer = Consumer({"bootstrap.servers": stack.broker, "group.id": f"{stack.group}-dlq-reader",
                         "enable.auto.commit": False})
    messages: list[Any] = []
    sources: set[tuple[int, int]] = set()
    try:
        partitions = consumer.list_topics(stack.dlq_topic, timeout=15).topics[stack.dlq_topic].partitions
        consumer.assign([TopicPartition(stack.dlq_topic, p, OFFSET_BEGINNING) for p in partitions])

        def have_all() -> bool:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                assert msg.error() is None, msg.error()
                messages.append(msg)
                sources.update(dlq_sources([msg]))
            return len(sources) >= distinct

        try:
            wait_for(have_all, timeout_s=timeout_s, interval_s=0)
        except AssertionError:
            raise AssertionError(f"the DLQ topic has {len(sources)} of {distinct} dead letters") from None
        # a repeat of one already seen may still be behind: read on briefly, then stop
        messages.extend(consumer.consume(num_messages=1000, timeout=1.0))
    finally:
        consumer.close()
    return messages


def dlq_sources(messages: Sequence[Any]) -> list[tuple[int, int]]:
    """The source (partition, offset) named by each DLQ message's `valora-reason` header."""
    out = []
    for msg in messages:
        reason = json.loads(dict(msg.headers() or [])["valora-reason"])
        out.append((reason["partition"], reason["offset"]))
    return out


def assert_exact(stack: Stack, work: Workload) -> None:
    """Counters, totals and the event count equal what the workload says, exactly."""
    c = stack.counters()
    assert c.received == c.accepted + c.duplicates + c.dead_lettered, c
    assert (c.received, c.accepted, c.duplicates, c.dead_lettered) == (
        work.records, work.accepted, work.duplicates, work.dead_lettered
    ), f"counters {c} != expected received/accepted/duplicates/dead_lettered"
    assert stack.event_count() == work.unique_events
    assert len(stack.dead_letter_sources()) == work.dead_lettered
    expected = {k: v for k, v in work.totals.items() if v}
    got = stack.totals()
    wrong = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
    extra = {k: v for k, v in got.items() if k not in expected}
    assert not wrong and not extra, f"totals differ (got, expected): {wrong}; unexpected rows: {extra}"


@pytest.fixture
def stack_factory(broker: str, database_url: str, topic_prefix: str, tmp_path: Path) -> Callable[..., Stack]:
    """`stack_factory(VALORA_X="...")`: a Stack whose worker env has these extra settings."""

    def make(**extra: str) -> Stack:
        return Stack(broker, database_url, topic_prefix, tmp_path, **extra)

    return make


# --- worker subprocesses -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class WorkerProc:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int | None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def metric(self, name: str) -> float:
        """A counter from the worker's Prometheus endpoint (needs a metrics port)."""
        assert self.metrics_port is not None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except urllib.error.URLError:
            if self.alive():
                return 0.0  # still starting: the endpoint is not up yet
            raise
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0


class WorkerPool:
    """Starts `python -m valora.cli worker` subprocesses; teardown kills whatever still runs."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[WorkerProc] = []
        self._handles: list[Any] = []

    def start(self, env: dict[str, str], name: str, *, metrics: bool = False) -> WorkerProc:
        """Start `valora worker` (runs until stopped); `metrics` gives it a Prometheus port."""
        env = dict(env)
        port = free_port() if metrics else None
        if port is not None:
            env["VALORA_METRICS_PORT"] = str(port)
        env.setdefault("VALORA_LOG_LEVEL", "info")  # retries and rebalances show in the log
        log_path = self.log_dir / f"worker-{name}.log"
        handle = log_path.open("ab")
        self._handles.append(handle)
        args = [sys.executable, "-m", "valora.cli", "worker"]
        proc = subprocess.Popen(args, env=env, stdout=handle, stderr=subprocess.STDOUT)
        wp = WorkerProc(name, proc, log_path, port)
        self.procs.append(wp)
        return wp

    @staticmethod
    def kill(wp: WorkerProc) -> None:
        """SIGKILL and reap."""
        if wp.alive():
            wp.proc.send_signal(signal.SIGKILL)
        wp.proc.wait(timeout=10)

    @staticmethod
    def terminate(wp: WorkerProc, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait for a clean exit; returns the exit status."""
        wp.proc.send_signal(signal.SIGTERM)
        try:
            return wp.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker {wp.name} did not stop within {timeout_s:g} s of SIGTERM:\n"
                                 f"{wp.log()[-3000:]}") from None

    def close(self) -> None:
        for wp in self.procs:
            if wp.alive():
                wp.proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                wp.proc.wait(timeout=10)
        for handle in self._handles:
            handle.close()

    def logs(self) -> str:
        return "\n".join(f"--- worker {wp.name} (exit {wp.proc.poll()}) ---\n{wp.log()[-4000:]}" for wp in self.procs)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[WorkerPool]:
    pool = WorkerPool(tmp_path)
    try:
        yield pool
    finally:
        pool.close()


# --- producing while the worker runs -----------------------------------------------------


def producer(bootstrap: str) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5,
                     "compression.type": "lz4"})


class PacedPublisher:
    """Produces records in chunks of `chunk` from a background thread, `pause_s` apart.

    The pause paces the producer (so the worker reads while records keep arriving); it is
    never used to wait for work. `join()` re-raises a delivery failure.
    """

    def __init__(self, bootstrap: str, topic: str, records: Sequence[KV], *, chunk: int = 50,
                 pause_s: float = 0.02) -> None:
        self.bootstrap, self.topic, self.records = bootstrap, topic, list(records)
        self.chunk, self.pause_s = chunk, pause_s
        self.delivered = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paced-publisher", daemon=True)

    def start(self) -> PacedPublisher:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            prod = producer(self.bootstrap)
            failures: list[str] = []

            def delivered(err: object, _msg: object) -> None:
                if err is not None:
                    failures.append(str(err))

            for i in range(0, len(self.records), self.chunk):
                for key, value in self.records[i:i + self.chunk]:
                    prod.produce(self.topic, key=key, value=value, on_delivery=delivered)
                if prod.flush(30) or failures:
                    raise RuntimeError(f"records not delivered: {failures[:1] or 'flush timed out'}")
                self.delivered = min(i + self.chunk, len(self.records))
                if self._stop.wait(self.pause_s):
                    return
        except BaseException as exc:  # surfaced by join()
            self.error = exc

    def join(self, timeout_s: float = 60.0) -> None:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise AssertionError(f"publisher still running after {timeout_s:g} s")
        if self.error is not None:
            raise AssertionError(f"publishing failed: {self.error}") from self.error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
