"""Scale-out: several workers in one consumer group share a 6-partition topic exactly once.

Two workers start and split the partitions; a third joins while events flow (a rebalance
under load) and must get a share of the work; later the first one is stopped with SIGTERM
while events flow (another rebalance: its partitions move to the others). Whatever the
assignments did, every record is counted once and the totals are exact. Each worker's own
Prometheus counter shows who did work (Postgres cannot attribute a row to a worker).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.conftest import wait_for
from tests.streams.conftest import (
    PacedPublisher,
    Stack,
    WorkerPool,
    WorkerProc,
    Workload,
    assert_exact,
    make_catalog,
    make_tenants,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECEIVED = "valora_worker_records_received_total"


def test_workers_join_and_leave_under_load_and_count_everything_once(
    stack_factory: Callable[..., Stack], workers: WorkerPool
) -> None:
    started = time.monotonic()
    marks: list[str] = []

    def mark(what: str) -> None:
        marks.append(f"{time.monotonic() - started:5.1f}s {what}")

    # small batches so a wave spans many batches and a rebalance lands in the middle of the flow
    stack = stack_factory(VALORA_TOPIC_PARTITIONS="6", VALORA_BATCH_MAX="200")
    tenants = make_tenants(20)
    stack.setup(make_catalog(tenants))  # also creates the 6-partition topic (ensure_topics)
    work = Workload(tenants, seed=3)

    def flow(n_valid: int, n_dup: int) -> PacedPublisher:
        return PacedPublisher(stack.broker, stack.topic, work.wave(n_valid, n_dup), chunk=40, pause_s=0.02).start()

    def drain(publisher: PacedPublisher, what: str) -> None:
        publisher.join()
        stack.wait_received(work.records, timeout_s=60, message=f"{what} not drained")
        mark(f"{what} drained ({work.records} records)")

    def share(wp: WorkerProc) -> float:
        return wp.metric(RECEIVED)

    try:
        w1 = workers.start(stack.env, "w1", metrics=True)
        w2 = workers.start(stack.env, "w2", metrics=True)
        drain(flow(600, 60), "wave 1 (w1 + w2)")
        shares = {wp.name: share(wp) for wp in (w1, w2)}
        mark(f"shares {shares}")
        assert all(shares.values()), f"both workers of the group should have had partitions: {shares}"
        assert stack.partitions_used() == set(range(6)), "the tenants' keys should cover every partition"

        w3 = workers.start(stack.env, "w3", metrics=True)
        mark("w3 started")
        waves = 0
        while share(w3) == 0:  # keep events flowing until the group has given w3 its share
            waves += 1
            assert waves <= 30 and w3.alive(), f"w3 never got any work (waves: {waves}, alive: {w3.alive()})"
            drain(flow(150, 15), f"wave 2.{waves} (w3 joining)")
        shares = {wp.name: share(wp) for wp in (w1, w2, w3)}
        mark(f"shares {shares}")

        leaving = flow(1200, 120)  # w1 leaves while this wave flows
        wait_for(lambda: leaving.delivered >= 300, timeout_s=30, message="publisher stalled")
        status = workers.terminate(w1)
        mark(f"w1 stopped (exit {status})")
        drain(leaving, "wave 3 (w1 leaving)")
        drain(flow(600, 60), "wave 4 (w2 + w3)")  # w1's partitions must have moved for this to drain
        final = {wp.name: share(wp) for wp in (w2, w3)}
        mark(f"shares {final}")
        assert status == 0, f"w1 exited {status} on SIGTERM"
        assert_exact(stack, work)
    except BaseException:
        print("\n".join(marks))
        print(workers.logs())
        raise
    print("\n".join(marks))
