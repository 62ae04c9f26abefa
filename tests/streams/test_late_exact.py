"""Late usage of every aggregation and trials ending mid-period, through the real worker and close."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from streams.publish import publish
from tests.helpers import ISSUE_CATALOG, cli_env, native_event, run_cli, write_json

pytestmark = pytest.mark.integration

CATALOG: dict[str, Any] = copy.deepcopy(ISSUE_CATALOG)
CATALOG["meters"] += [
    {"organization": "acme", "key": "peak_gb", "event_type": "storage", "aggregation": "max", "value_property": "gb"},
    {
        "organization": "acme",
        "key": "users",
        "event_type": "login",
        "aggregation": "unique_count",
        "value_property": "u",
    },
    {"organization": "acme", "key": "seats", "event_type": "seats", "aggregation": "latest", "value_property": "n"},
]
_USAGE_CHARGES = [
    {"key": "gb", "meter": "peak_gb", "model": "per_unit", "unit_amount": "0.1"},
    {"key": "users", "meter": "users", "model": "per_unit", "unit_amount": "2"},
    {"key": "seats", "meter": "seats", "model": "per_unit", "unit_amount": "10"},
    {"key": "calls", "meter": "api_calls", "model": "per_unit", "unit_amount": "1"},
]
for code, trial_billed in (("mixed", True), ("trial_free", False)):
    CATALOG["plans"].append(
        {
            "organization": "acme",
            "code": code,
            "currency": "USD",
            "interval": "month",
            "trial_usage_billed": trial_billed,
            "charges": [{"key": "base", "model": "flat", "amount": "31"}, *_USAGE_CHARGES],
        }
    )
CATALOG["customers"] += [
    {"organization": "acme", "id": cus, "name": cus} for cus in ("cus_late", "cus_trial_free", "cus_trial_billed")
]
_TRIAL = {
    "start": "2026-01-01T00:00:00Z",
    "billing_anchor": "2026-01-01T00:00:00Z",
    "trial_end": "2026-01-15T12:00:00Z",
}
CATALOG["subscriptions"] += [
    {
        "organization": "acme",
        "id": "sub_late",
        "customer": "cus_late",
        "plan": "mixed",
        "start": "2026-01-01T00:00:00Z",
    },
    {"organization": "acme", "id": "sub_tf", "customer": "cus_trial_free", "plan": "trial_free", **_TRIAL},
    {"organization": "acme", "id": "sub_tb", "customer": "cus_trial_billed", "plan": "mixed", **_TRIAL},
]


def _ev(i: str, customer: str, type_: str, time: str, **props: Any) -> tuple[bytes, bytes]:
    return b"acme", native_event(i, customer, time, type_, **props)


def _invoice(env: dict[str, str], customer: str, period_start: str) -> dict[str, Any]:
    invoices = json.loads(run_cli(["invoices", "list", "--org", "acme", "--customer", customer, "--json"], env).stdout)
    [inv] = [i for i in invoices if i["period_start"] == period_start]
    return inv  # type: ignore[no-any-return]


def _amounts(invoice: dict[str, Any], kind: str) -> dict[str, int]:
    return {line["charge"]: line["amount_minor"] for line in invoice["lines"] if line["kind"] == kind}


def _run(env: dict[str, str], events: list[tuple[bytes, bytes]], close_as_of: str) -> None:
    publish(env["VALORA_KAFKA_BOOTSTRAP"], env["VALORA_EVENTS_TOPIC"], events)
    run_cli(["worker", "--until-idle"], env)
    run_cli(["close", "--as-of", close_as_of], env)


def test_late_usage_of_every_aggregation_and_trials(
    broker: str, database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = cli_env(broker, database_url, topic_prefix)
    run_cli(["db", "upgrade"], env)
    run_cli(["catalog", "apply", str(write_json(tmp_path / "catalog.json", CATALOG))], env)
    late = "cus_late"
    trial_usage = [
        _ev(f"{sub}-{i}", cus, "api_request", at)
        for sub, cus in (("tf", "cus_trial_free"), ("tb", "cus_trial_billed"))
        for i, at in enumerate(
            ["2026-01-10T00:00:00Z", "2026-01-15T11:59:59Z", "2026-01-15T12:00:00Z", "2026-01-31T00:00:00Z"]
        )
    ]
    _run(
        env,
        [
            _ev("s1", late, "storage", "2026-01-05T00:00:00Z", gb=40),
            _ev("n1", late, "seats", "2026-01-20T00:00:00Z", n=7),
            _ev("l1", late, "login", "2026-01-05T00:00:00Z", u="u1"),
            _ev("l2", late, "login", "2026-01-06T00:00:00Z", u="u2"),
            *trial_usage,
        ],
        "2026-02-01T01:00:00Z",
    )
    january = _invoice(env, late, "2026-01-01T00:00:00Z")
    assert _amounts(january, "usage") == {"gb": 400, "users": 400, "seats": 7000, "calls": 0}

    # A trial ending Jan 15 12:00: a plan that does not bill trial usage bills the two calls after it.
    trial_free = _invoice(env, "cus_trial_free", "2026-01-01T00:00:00Z")
    assert _amounts(trial_free, "usage")["calls"] == 200
    # The trial's window adds no line: the period bills the paid part's usage.
    assert [line["quantity"] for line in trial_free["lines"] if line["charge"] == "calls"] == ["2"]
    assert _amounts(_invoice(env, "cus_trial_billed", "2026-01-01T00:00:00Z"), "usage")["calls"] == 400
    # The flat fee is prorated to the paid part either way: 16.5 of 31 days.
    assert (
        _amounts(trial_free, "flat")["base"]
        == _amounts(_invoice(env, "cus_trial_billed", "2026-01-01T00:00:00Z"), "flat")["base"]
        == 1650
    )

    # Late January values that do not move what January billed: no adjustment at all.
    _run(
        env,
        [
            _ev("s2", late, "storage", "2026-01-06T00:00:00Z", gb=39),  # below the billed max
            _ev("n0", late, "seats", "2026-01-10T00:00:00Z", n=3),  # older than the billed latest
            _ev("l3", late, "login", "2026-01-07T00:00:00Z", u="u1"),  # already counted
            _ev("tf-late", "cus_trial_free", "api_request", "2026-01-12T00:00:00Z"),  # during the free trial
        ],
        "2026-03-01T01:00:00Z",
    )
    february = _invoice(env, late, "2026-02-01T00:00:00Z")
    assert _amounts(february, "adjustment") == {}
    assert _amounts(_invoice(env, "cus_trial_free", "2026-02-01T00:00:00Z"), "adjustment") == {}
    rows = json.loads(run_cli(["usage", "--org", "acme", "--customer", late, "--late", "--json"], env).stdout)
    assert {(r["event"], r["billed_on_invoice"]) for r in rows} == {(e, february["id"]) for e in ("s2", "n0", "l3")}

    # Late values that do: a new max, a newer latest, a new unique value, a call after the trial.
    _run(
        env,
        [
            _ev("s3", late, "storage", "2026-01-07T00:00:00Z", gb=55),
            _ev("n2", late, "seats", "2026-01-25T00:00:00Z", n=9),
            _ev("l4", late, "login", "2026-01-08T00:00:00Z", u="u3"),
            _ev("l5", late, "login", "2026-01-09T00:00:00Z", u="u2"),
            _ev("tf-late2", "cus_trial_free", "api_request", "2026-01-20T00:00:00Z"),
        ],
        "2026-04-01T01:00:00Z",
    )
    march = _invoice(env, late, "2026-03-01T00:00:00Z")
    # 15 GB more peak × 0.1; 2 seats more × 10; one new user × 2.
    assert _amounts(march, "adjustment") == {"gb": 150, "seats": 2000, "users": 200}
    assert _amounts(_invoice(env, "cus_trial_free", "2026-03-01T00:00:00Z"), "adjustment") == {"calls": 100}
