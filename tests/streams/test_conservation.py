"""Conservation: every record read is accepted, a duplicate or a dead letter — exactly once.

One mixed stream over 20 tenants: valid native events, CloudEvents (same id under two
sources = two events), re-sent duplicates (some with a different payload), and bad records
of every kind, most of them from one noisy tenant, interleaved with everyone's good ones.
After `valora worker --until-idle`:

* the counters in `consumer_offsets` balance and each equals what was produced;
* `dead_letters` holds each bad record once with the right reason code;
* the DLQ topic carries each bad record's original key and value, with a `valora-reason`
  header naming the code, a detail, and the source topic/partition/offset;
* every tenant's totals (the noisy one included) are exact: bad records stop nobody.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable
from decimal import Decimal

import pytest

from streams.publish import publish
from tests.helpers import run_cli
from tests.streams.conftest import (
    KV,
    Stack,
    Tenant,
    Workload,
    assert_exact,
    make_catalog,
    make_tenants,
    native,
    read_dlq,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

Bad = tuple[bytes | None, bytes | None, str]  # key, value, expected reason code


def cloud_events(
    work: Workload, tenants: list[Tenant], n: int, rng: random.Random, per_org: Counter[str]
) -> list[KV]:
    """`n` CloudEvents; the same id under a second source is a distinct event, a re-send is not."""
    out: list[KV] = []
    originals: list[KV] = []
    for i in range(n):
        tenant = rng.choice(tenants)
        customer = rng.choice(tenant.customers)
        tokens = Decimal(rng.randrange(1, 10_000)) / 10
        source = "svc-a" if i % 2 else "svc-b"
        body = {
            "specversion": "1.0", "id": f"ce-{i // 2}", "source": source, "type": "llm_call", "subject": customer,
            "time": f"2026-01-{1 + i % 28:02d}T12:00:00Z", "datacontenttype": "application/json",
            "data": {"tokens": float(tokens)},
        }
        kv = (tenant.org.encode(), json.dumps(body).encode())
        out.append(kv)
        originals.append(kv)
        work.totals[(tenant.org, tenant.subscription(customer), "tokens")] += tokens
        per_org[tenant.org] += 1
    resent = rng.sample(originals, n // 5)
    out += resent
    work.records += n + len(resent)
    work.accepted += n
    work.other_events += n
    work.duplicates += len(resent)
    return out


def bad_records(noisy: str, other: str) -> list[Bad]:
    """Bad records of every reason code; each (key, value) is unique so rows can be matched."""
    jan = "2026-01-10T00:00:00Z"
    bad: list[Bad] = []
    for i in range(40):
        org = noisy if i % 4 else other
        key = org.encode()
        bad += [
            (key, f'{{"id": "broken-{i}", oops'.encode(), "invalid_json"),
            (key, native(f"nc-{i}", f"nobody-{i}", jan, "api_request", {}), "unknown_customer"),
            (key, native(f"nn-{i}", "cus_1", jan, "llm_call", {"tokens": f"lots-{i}"}), "value_not_numeric"),
            (b"ghost-org", native(f"uo-{org}-{i}", "cus_1", jan, "api_request", {}), "unknown_organization"),
            (key, json.dumps({"id": f"sc-{i}", "customer": "cus_1", "time": jan}).encode(), "schema"),
            (key, native(f"na-{i}", "cus_1", "2025-12-15T00:00:00Z", "api_request", {}), "no_active_subscription"),
            (key, native(f"ff-{i}", "cus_1", "2030-01-01T00:00:00Z", "api_request", {}), "too_far_in_future"),
        ]
    bad += [
        (None, native("nokey", "cus_1", jan, "api_request", {}), "schema"),  # no key: no organization
        (noisy.encode(), None, "invalid_json"),  # a tombstone
        (noisy.encode(), native("boolean", "cus_1", jan, "llm_call", {"tokens": True}), "value_not_numeric"),
    ]
    return bad


def test_every_record_is_accepted_duplicate_or_dead_lettered_exactly_once(
    stack_factory: Callable[..., Stack],
) -> None:
    started = time.monotonic()
    stack = stack_factory()
    tenants = make_tenants(20)
    stack.setup(make_catalog(tenants))
    rng = random.Random(11)
    work = Workload(tenants, seed=11)
    noisy, other = tenants[0].org, tenants[1].org

    cloud_by_org: Counter[str] = Counter()
    good: list[KV] = work.valid(1500) + cloud_events(work, tenants, 200, rng, cloud_by_org) + work.resend(150)
    expected_by_org = Counter(s.org for s in work.sent) + cloud_by_org
    bad = bad_records(noisy, other)
    work.records += len(bad)
    work.dead_lettered += len(bad)
    stream: list[KV] = list(good)
    for key, value, _code in bad:  # bad records land anywhere, between anyone's good ones
        stream.insert(rng.randrange(len(stream) + 1), (key, value))
    assert publish(stack.broker, stack.topic, stream) == work.records

    out = run_cli(["worker", "--until-idle"], stack.env)
    summary = out.stdout.strip()
    c = stack.counters()
    assert c.received == work.records, f"worker stopped before reading everything: {c}; {summary}"
    assert_exact(stack, work)
    assert f"dead_lettered {len(bad)}" in summary and f"accepted {work.accepted}" in summary, summary

    # bad records stop nobody: the noisy tenant's good events and everyone else's are all there
    assert stack.event_counts_by_org() == expected_by_org
    totals = stack.totals()
    for tenant in (noisy, other):
        mine = {k: v for k, v in work.totals.items() if k[0] == tenant}
        assert {k: v for k, v in totals.items() if k[0] == tenant} == mine, f"{tenant}'s totals are not exact"

    # dead_letters: each bad record once, with its reason code
    with stack.connect() as conn:
        rows = conn.execute(
            'SELECT topic, partition, "offset", organization_id, code, detail, key, value FROM dead_letters'
        ).fetchall()
    assert Counter((r[6], r[7], r[4]) for r in rows) == Counter(bad)
    assert all(r[0] == stack.topic and r[5] for r in rows), "every dead letter names its topic and a detail"
    unknown_org = [r for r in rows if r[4] == "unknown_organization"]
    assert unknown_org and all(r[3] == "ghost-org" for r in unknown_org)
    by_source = {(r[1], r[2]): r for r in rows}

    # the DLQ topic: the original key and value plus a valora-reason header pointing at the source
    messages = read_dlq(stack, distinct=len(bad))
    seen: set[tuple[int, int]] = set()
    for msg in messages:
        headers = dict(msg.headers() or [])
        assert set(headers) == {"valora-reason"}, headers
        reason = json.loads(headers["valora-reason"])
        assert set(reason) == {"code", "detail", "topic", "partition", "offset"}, reason
        assert reason["topic"] == stack.topic
        source = (reason["partition"], reason["offset"])
        row = by_source.get(source)
        assert row is not None, f"DLQ message for {source} has no dead_letters row"
        assert (msg.key(), msg.value(), reason["code"], reason["detail"]) == (row[6], row[7], row[4], row[5])
        seen.add(source)
    assert seen == set(by_source), "every dead letter is on the DLQ topic"
    assert len(messages) == len(bad), f"{len(messages) - len(bad)} dead letter(s) were produced twice"
    print(f"conservation: {work.records} records in {time.monotonic() - started:.1f}s")
