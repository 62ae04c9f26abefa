"""Bad input and missing services: one clear line on stderr, a non-zero exit, no traceback."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import psycopg
import pytest

from tests.helpers import ISSUE_CATALOG, cli_env, run_cli, write_json

pytestmark = pytest.mark.integration


def _assert_one_line_error(proc: object, *needles: str) -> None:
    stderr = proc.stderr.strip()  # type: ignore[attr-defined]
    assert proc.returncode != 0, proc  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    assert len(stderr.splitlines()) == 1, stderr
    for needle in needles:
        assert needle in stderr, stderr


def _organizations(database_url: str) -> int:
    with psycopg.connect(database_url.replace("+psycopg", "")) as conn:
        return conn.execute("SELECT count(*) FROM organizations").fetchone()[0]  # type: ignore[index]


def test_bad_catalog_names_the_entry_and_applies_nothing(database_url: str, topic_prefix: str, tmp_path: Path) -> None:
    env = cli_env(None, database_url, topic_prefix)
    run_cli(["db", "upgrade"], env)
    bad = copy.deepcopy(ISSUE_CATALOG)
    bad["plans"][0]["charges"].append(
        {
            "key": "gb",
            "meter": "api_calls",
            "model": "graduated",
            "tiers": [
                {"up_to": "10", "unit_amount": "1"},
                {"up_to": "5", "unit_amount": "1"},
                {"up_to": None, "unit_amount": "1"},
            ],
        }
    )
    proc = run_cli(["catalog", "apply", str(write_json(tmp_path / "bad.json", bad))], env, check=False)
    _assert_one_line_error(proc, "starter", "gb")
    assert _organizations(database_url) == 0


def test_catalog_reference_to_unknown_plan(database_url: str, topic_prefix: str, tmp_path: Path) -> None:
    env = cli_env(None, database_url, topic_prefix)
    run_cli(["db", "upgrade"], env)
    bad = copy.deepcopy(ISSUE_CATALOG)
    bad["subscriptions"][0]["plan"] = "platinum"
    proc = run_cli(["catalog", "apply", str(write_json(tmp_path / "bad.json", bad))], env, check=False)
    _assert_one_line_error(proc, "sub_1", "platinum")
    assert _organizations(database_url) == 0


def test_catalog_file_that_is_not_json(database_url: str, topic_prefix: str, tmp_path: Path) -> None:
    env = cli_env(None, database_url, topic_prefix)
    run_cli(["db", "upgrade"], env)
    path = tmp_path / "broken.json"
    path.write_text('{"organizations": [')
    _assert_one_line_error(run_cli(["catalog", "apply", str(path)], env, check=False), "not valid")


def test_catalog_apply_is_idempotent(database_url: str, topic_prefix: str, tmp_path: Path) -> None:
    env = cli_env(None, database_url, topic_prefix)
    run_cli(["db", "upgrade"], env)
    path = write_json(tmp_path / "catalog.json", ISSUE_CATALOG)
    first = run_cli(["catalog", "apply", str(path)], env).stdout
    assert run_cli(["catalog", "apply", str(path)], env).stdout == first
    assert _organizations(database_url) == 1


def test_unreachable_database(topic_prefix: str) -> None:
    env = cli_env(None, "postgresql+psycopg://postgres@127.0.0.1:1/nowhere", topic_prefix)
    _assert_one_line_error(run_cli(["db", "upgrade"], env, check=False), "127.0.0.1")
    _assert_one_line_error(run_cli(["invoices", "list", "--org", "acme"], env, check=False), "database")


def test_unreachable_broker(database_url: str, topic_prefix: str) -> None:
    env = cli_env("127.0.0.1:1", database_url, topic_prefix)
    run_cli(["db", "upgrade"], env)
    _assert_one_line_error(run_cli(["worker", "--until-idle"], env, check=False), "127.0.0.1:1", "broker")


def test_out_of_date_schema_is_refused(database_url: str, topic_prefix: str, tmp_path: Path) -> None:
    env = cli_env(None, database_url, topic_prefix)
    path = write_json(tmp_path / "catalog.json", ISSUE_CATALOG)
    _assert_one_line_error(run_cli(["catalog", "apply", str(path)], env, check=False), "valora db upgrade")


def test_no_services_configured_points_at_dev_up(topic_prefix: str, tmp_path: Path) -> None:
    env = cli_env(None, None, topic_prefix, VALORA_STATE_DIR=str(tmp_path / "empty"))
    _assert_one_line_error(run_cli(["invoices", "list", "--org", "acme"], env, check=False), "valora dev up")


def test_catalog_apply_accepts_yaml(database_url: str, topic_prefix: str, tmp_path: Path) -> None:
    import yaml

    env = cli_env(None, database_url, topic_prefix)
    run_cli(["db", "upgrade"], env)
    sample = json.loads((Path(__file__).parents[1] / "valora" / "sample" / "catalog.json").read_text())
    # Unquoted decimals and a null (open-ended) tier, as people write YAML by hand.
    text = yaml.safe_dump(sample).replace("'0.002'", "0.002").replace("'0.00002'", "0.00002")
    assert "unit_amount: 0.002" in text and "up_to: null" in text
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    assert run_cli(["catalog", "apply", str(path)], env).stdout.startswith("applied 1 organizations")
    with psycopg.connect(database_url.replace("+psycopg", "")) as conn:
        row = conn.execute("SELECT spec FROM plans WHERE code = 'starter'").fetchone()
        tiers = conn.execute("SELECT spec FROM plans WHERE code = 'pro'").fetchone()
    assert row is not None and row[0]["charges"][1]["unit_amount"] == "0.002"  # exact, never a binary float
    assert tiers is not None and tiers[0]["charges"][2]["tiers"][1]["up_to"] is None
