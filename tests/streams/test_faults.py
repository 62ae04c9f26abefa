"""Faults while events flow: the worker loses nothing and counts nothing twice.

* SIGKILL at random points (after part of a wave is committed, before all of it),
  restart, three times over: Kafka re-delivers from its trailing commit and the offsets
  in Postgres drop what was already counted.
* Postgres cut off under load: its connections are terminated again and again, then the
  database refuses every new connection for a few seconds. The worker must retry on its
  own (no restart) and end with exact totals.

Delays come from a seeded `random.Random`, so a failing run can be replayed. Waiting for
work is always polling Postgres with a deadline; the only sleeps pace fault injection.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from invoicing.db import psycopg_connect_args
from streams.publish import publish
from tests.conftest import wait_for
from tests.streams.conftest import (
    PacedPublisher,
    Stack,
    WorkerPool,
    Workload,
    assert_exact,
    dlq_sources,
    make_catalog,
    make_tenants,
    read_dlq,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 20260101
REPLAYED = "valora_worker_records_replayed_total"
RETRIES = "valora_worker_batch_retries_total"


def test_sigkill_at_random_points_then_restart_loses_and_doubles_nothing(
    stack_factory: Callable[..., Stack], workers: WorkerPool
) -> None:
    rng = random.Random(SEED)
    started = time.monotonic()
    marks: list[str] = []

    def mark(what: str) -> None:
        marks.append(f"{time.monotonic() - started:5.1f}s {what}")

    stack = stack_factory(VALORA_BATCH_MAX="100")  # many small commits: a kill lands between or inside them
    tenants = make_tenants(20)
    stack.setup(make_catalog(tenants))
    work = Workload(tenants, seed=SEED)
    try:
        wp = workers.start(stack.env, "run0", metrics=True)
        publish(stack.broker, stack.topic, work.wave(100, 10, 2))
        for round_ in range(1, 4):
            # the (re)started worker has joined and committed everything so far, the killed one's
            # leftovers included: the next wave flows while it is consuming
            stack.wait_received(work.records, timeout_s=60, message=f"{wp.name} never caught up")
            mark(f"{wp.name} caught up ({work.records} records; it skipped {wp.metric(REPLAYED):.0f} replays)")
            base = work.records
            wave = work.wave(700, 70, 14)
            publisher = PacedPublisher(stack.broker, stack.topic, wave, chunk=35, pause_s=0.04).start()
            target = work.records
            wait_for(lambda: stack.received() > base, timeout_s=30, interval_s=0.02,  # noqa: B023 (called here)
                     message=f"round {round_}: the worker committed nothing of the new wave")
            time.sleep(rng.uniform(0.0, 0.5))  # the random kill point (fault injection, not a wait for work)
            workers.kill(wp)
            at_kill = stack.received()  # exactly what was committed when the process died
            mark(f"round {round_}: SIGKILL with {at_kill - base} of {target - base} committed")
            assert base < at_kill < target, "the kill should land after some but before all of the wave"
            publisher.join()
            wp = workers.start(stack.env, f"run{round_}", metrics=True)
        publish(stack.broker, stack.topic, work.wave(300, 30, 6))
        stack.wait_received(work.records, timeout_s=90, message="after the last restart")
        mark(f"all {work.records} records accounted for; last run skipped {wp.metric(REPLAYED):.0f} replays")
        assert wp.alive()
        assert_exact(stack, work)
        assert_dead_letters_delivered(stack, mark)
    except BaseException:
        print("\n".join(marks))
        print(workers.logs())
        raise
    print("\n".join(marks))


def assert_dead_letters_delivered(stack: Stack, mark: Callable[[str], None]) -> None:
    """Each dead letter is on the DLQ topic at least once (a crash may repeat one, never lose one)."""
    expected = stack.dead_letter_sources()
    sources = dlq_sources(read_dlq(stack, distinct=len(expected)))
    mark(f"DLQ topic: {len(sources)} message(s) for {len(expected)} dead letters")
    assert set(sources) == expected


@pytest.fixture
def admin(pg_admin_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit superuser connection to the server's `postgres` database."""
    args = psycopg_connect_args(pg_admin_url) | {"dbname": "postgres", "connect_timeout": 5}
    with psycopg.connect(**args, autocommit=True) as conn:
        yield conn


def terminate_backends(admin: psycopg.Connection[Any], database: str) -> int:
    rows = admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (database,),
    ).fetchall()
    return sum(1 for (ok,) in rows if ok)


def test_worker_rides_out_postgres_cut_offs_by_itself(
    stack_factory: Callable[..., Stack], workers: WorkerPool, admin: psycopg.Connection[Any]
) -> None:
    rng = random.Random(SEED + 1)
    started = time.monotonic()
    marks: list[str] = []

    def mark(what: str) -> None:
        marks.append(f"{time.monotonic() - started:5.1f}s {what}")

    stack = stack_factory(VALORA_BATCH_MAX="100")
    tenants = make_tenants(20)
    stack.setup(make_catalog(tenants))
    work = Workload(tenants, seed=SEED + 1)
    database = sql.Identifier(stack.database)
    try:
        wp = workers.start(stack.env, "w", metrics=True)
        publish(stack.broker, stack.topic, work.wave(100, 10, 2))
        stack.wait_received(work.records, timeout_s=60, message="worker never caught up")
        mark("caught up")

        base = work.records
        publisher = PacedPublisher(stack.broker, stack.topic, work.wave(1000, 100, 20), chunk=20, pause_s=0.04).start()
        wait_for(lambda: stack.received() > base, timeout_s=30, interval_s=0.02,
                 message="the worker committed nothing of the new wave")
        # 1. connections cut again and again while batches commit
        terminated = 0
        for _ in range(8):
            terminated += terminate_backends(admin, stack.database)
            time.sleep(rng.uniform(0.05, 0.3))  # pacing the fault injection
        mark(f"terminated {terminated} backend(s); committed so far {stack.received() - base}")
        assert terminated > 0, "the worker had no connection to cut"

        # 2. a hard outage: CONNECTION LIMIT 0 does not stop a superuser (the test role here),
        #    ALLOW_CONNECTIONS false stops everyone
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(database))
        try:
            terminate_backends(admin, stack.database)
            # more events arrive while Postgres is away
            during = PacedPublisher(stack.broker, stack.topic, work.wave(600, 60, 12), chunk=20, pause_s=0.04).start()
            with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
                stack.connect()
            time.sleep(rng.uniform(2.5, 4.0))  # the outage lasts this long (fault injection)
            assert wp.alive(), "the worker gave up while Postgres was away"
        finally:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(database))
        mark(f"database accepts connections again; {during.delivered} records published during the outage")
        assert during.delivered > 0

        publisher.join()
        during.join()
        stack.wait_received(work.records, timeout_s=60, message="the worker did not recover after the outage")
        mark(f"all {work.records} records accounted for after {wp.metric(RETRIES):.0f} batch retries")
        assert wp.alive()
        assert wp.metric(RETRIES) > 0, "the cut-offs never hit a batch (the test did not test anything)"
        assert_exact(stack, work)
        assert_dead_letters_delivered(stack, mark)
    except BaseException:
        print("\n".join(marks))
        print(workers.logs())
        raise
    print("\n".join(marks))
