"""`valora quote` as a user runs it: the issue's plan example, priced offline, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import cli_env, run_cli, write_json

PLAN = {
    "code": "pro",
    "currency": "USD",
    "interval": "month",
    "charges": [
        {"key": "base", "model": "flat", "amount": "49.00"},
        {
            "key": "api",
            "meter": "api_calls",
            "model": "per_unit",
            "unit_amount": "0.002",
            "free_units": "1000",
            "minimum_amount": "10",
            "maximum_amount": "500",
        },
        {
            "key": "gb",
            "meter": "storage_gb",
            "model": "graduated",
            "tiers": [{"up_to": "5", "unit_amount": "7", "flat_amount": "0"}, {"up_to": None, "unit_amount": "6"}],
        },
        {
            "key": "seats",
            "meter": "seats",
            "model": "volume",
            "tiers": [{"up_to": "10", "unit_amount": "12"}, {"up_to": None, "unit_amount": "10"}],
        },
        {
            "key": "sms",
            "meter": "sms",
            "model": "package",
            "package_size": "100",
            "package_amount": "5",
            "free_units": "0",
        },
    ],
}


def _quote(tmp_path: Path, plan: object, usage: object, *extra: str, check: bool = True) -> object:
    env = cli_env(None, None, "quote.")
    args = [
        "quote",
        "--plan",
        str(write_json(tmp_path / "plan.json", plan)),
        "--usage",
        str(write_json(tmp_path / "usage.json", usage)),
        "--period-start",
        "2026-01-01T00:00:00Z",
        "--period-end",
        "2026-02-01T00:00:00Z",
        *extra,
    ]
    return run_cli(args, env, check=check)


def test_quote_prices_every_model_to_the_cent(tmp_path: Path) -> None:
    usage = {"api_calls": 12000, "storage_gb": "7.5", "seats": 12, "sms": 250}
    out = json.loads(_quote(tmp_path, PLAN, usage, "--active-from", "2026-01-16T00:00:00Z").stdout)  # type: ignore[attr-defined]
    # base 49 × 16/31 = 25.29; api (12000 − 1000) × 0.002 = 22; gb 5 × 7 + 2.5 × 6 = 50;
    # seats 12 × 10 (volume) = 120; sms ceil(250 / 100) × 5 = 15
    assert [(x["charge"], x["amount_minor"], x["amount"]) for x in out["lines"]] == [
        ("base", 2529, "25.29"),
        ("api", 2200, "22.00"),
        ("gb", 5000, "50.00"),
        ("seats", 12000, "120.00"),
        ("sms", 1500, "15.00"),
    ]
    assert out["subtotal_minor"] == out["total_minor"] == 2529 + 2200 + 5000 + 12000 + 1500
    assert (out["currency"], out["period_start"], out["period_end"]) == (
        "USD",
        "2026-01-01T00:00:00Z",
        "2026-02-01T00:00:00Z",
    )


def test_quote_errors_are_one_line(tmp_path: Path) -> None:
    bad_plan = {
        **PLAN,
        "charges": [
            {"key": "gb", "meter": "storage_gb", "model": "graduated", "tiers": [{"up_to": "5", "unit_amount": "7"}]}
        ],
    }
    for plan, usage, needle in [(bad_plan, {}, "'gb'"), (PLAN, {"seats": -1}, "seats"), (PLAN, {"sms": "lots"}, "sms")]:
        proc = _quote(tmp_path, plan, usage, check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr  # type: ignore[attr-defined]
        assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr  # type: ignore[attr-defined]


def test_quote_reads_yaml_like_the_catalog(tmp_path: Path) -> None:
    """Plan and usage as hand-written YAML (unquoted decimals) quote the same as the JSON files."""
    import yaml

    from_json = json.loads(_quote(tmp_path, PLAN, {"api_calls": 12000, "storage_gb": "7.5"}).stdout)  # type: ignore[attr-defined]
    plan_text = yaml.safe_dump(PLAN).replace("'0.002'", "0.002").replace("'49.00'", "49.00")
    assert "unit_amount: 0.002" in plan_text and "up_to: null" in plan_text
    (tmp_path / "plan.yaml").write_text(plan_text)
    (tmp_path / "usage.yml").write_text("api_calls: 12000\nstorage_gb: 7.5\n")
    env = cli_env(None, None, "quote.")
    period = ["--period-start", "2026-01-01T00:00:00Z", "--period-end", "2026-02-01T00:00:00Z"]
    args = ["quote", "--plan", str(tmp_path / "plan.yaml"), "--usage", str(tmp_path / "usage.yml"), *period]
    assert json.loads(run_cli(args, env).stdout) == from_json
    (tmp_path / "broken.yaml").write_text("code: [unclosed\n")
    proc = run_cli(["quote", "--plan", str(tmp_path / "broken.yaml"), *period], env, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "broken.yaml: invalid YAML" in proc.stderr
