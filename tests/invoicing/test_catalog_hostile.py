"""`valora catalog apply` under hostile or careless input: one clear line, and billed history stays put.

The examples are the issue's: a 640-byte YAML alias bomb, the same id twice in a section, a
NUL byte in a name, a start in year 9999 and an anchor in year 0001, an organization moved to
currency XYZ, a plan amount of 1e30, re-anchoring or re-gridding an invoiced subscription,
`acme` and `ac-me` sharing a prefix, and a catalog of 5,000 subscriptions.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text

from invoicing.catalog import InvalidCatalog, apply_catalog, parse_catalog, read_catalog_file
from invoicing.catalog_guards import BilledHistoryChange, default_prefix
from invoicing.close import close_due
from invoicing.db import make_engine, upgrade
from tests.helpers import ISSUE_CATALOG, cli_env, run_cli, write_json

CLOSE_AT = datetime(2026, 2, 1, 1, tzinfo=UTC)

BOMB = "\n".join(
    [
        "meters:",
        '  - &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(
            f"  - &{name} [{','.join([f'*{prev}'] * 9)}]"
            for prev, name in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        "customers: *i",
    ]
)


def _catalog(**changes: Any) -> dict[str, Any]:
    """The issue catalog with entries of sections replaced field by field: section=[{...}, ...]."""
    cat = copy.deepcopy(ISSUE_CATALOG)
    for section, entries in changes.items():
        for i, fields in enumerate(entries):
            cat[section][i].update(fields)
    return cat


# --- reading and validating: pure -------------------------------------------------------------------


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB) < 700
    with pytest.raises(InvalidCatalog, match=r"aliases expand \d+ written nodes to \d+; aliases may add at most"):
        read_catalog_file(path)


def test_a_recursive_yaml_alias_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("customers: &a [*a]\n")
    with pytest.raises(InvalidCatalog, match="recursive"):
        read_catalog_file(path)


def test_yaml_aliases_for_sharing_still_work(tmp_path: Path) -> None:
    path = tmp_path / "shared.yaml"
    path.write_text(
        "organizations: [{id: acme, name: Acme, currency: USD}]\n"
        "plans:\n"
        "  - {organization: acme, code: a, currency: USD, charges: &charges [{key: base, model: flat, amount: '5'}]}\n"
        "  - {organization: acme, code: b, currency: USD, charges: *charges}\n"
    )
    cat = parse_catalog(read_catalog_file(path))
    first, second = (p.charges for _, p in cat.plans)
    assert first == second


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_nesting_too_deep_is_one_line(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"deep{suffix}"
    path.write_text('{"customers": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(InvalidCatalog, match=r"nested deeper than 64 levels|YAML: while increasing flow level"):
        parse_catalog(read_catalog_file(path))  # (libyaml has a depth limit of its own)
    path.write_text('{"customers": ' + "[" * 500 + "]" * 500 + "}")
    with pytest.raises(InvalidCatalog, match="nested deeper than 64 levels"):
        parse_catalog(read_catalog_file(path))


@pytest.mark.parametrize(
    ("catalog", "message"),
    [
        (
            {**ISSUE_CATALOG, "customers": [*ISSUE_CATALOG["customers"], *ISSUE_CATALOG["customers"]]},
            r"^customer acme/'cus_1' appears twice in customers \(customers\[0\] and customers\[1\]\)$",
        ),
        (_catalog(customers=[{"name": "Glo\x00bex"}]), r"^catalog customers\[0\]\.name: NUL byte"),
        (_catalog(customers=[{"name": "Glo\ud800bex"}]), r"^catalog customers\[0\]\.name: lone surrogate"),
        (_catalog(subscriptions=[{"start": "9999-01-01T00:00:00Z"}]), "start: .*outside the supported range"),
        (
            _catalog(subscriptions=[{"billing_anchor": "0001-01-01T00:00:00Z"}]),
            "billing_anchor: .*outside the supported range",
        ),
        (_catalog(organizations=[{"currency": "XYZ"}]), "currency: .*unknown currency 'XYZ'"),
        (_catalog(plans=[{"charges": [{"key": "base", "model": "flat", "amount": "1e30"}]}]), "amount: .*less than"),
        (_catalog(plans=[{"interval_count": 100_000}]), "interval_count"),
    ],
)
def test_bad_catalog_entries_are_one_clear_line(catalog: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidCatalog, match=message) as caught:
        parse_catalog(json.loads(json.dumps(catalog)))
    assert "\n" not in str(caught.value)


def test_default_prefixes_cannot_collide() -> None:
    assert default_prefix("acme", set()) == "ACME"
    other = default_prefix("ac-me", {"ACME"})
    assert other != "ACME" and other.startswith("ACME") and len(other) <= 12
    assert default_prefix("ac-me", {"ACME", other}) not in {"ACME", other}


# --- through the CLI: one line, no traceback ---------------------------------------------------------


@pytest.mark.integration
def test_cli_prints_one_line_for_hostile_catalogs(database_url: str, topic_prefix: str, tmp_path: Path) -> None:
    env = cli_env(None, database_url, topic_prefix)
    run_cli(["db", "upgrade"], env)
    (tmp_path / "bomb.yaml").write_text(BOMB)
    (tmp_path / "deep.json").write_text('{"customers": ' + "[" * 100_000 + "]" * 100_000 + "}")
    files = {
        "bomb.yaml": "aliases may add at most",
        "deep.json": "nested deeper than 64 levels",
        "dup.json": "appears twice",
        "nul.json": "NUL byte",
        "y9999.json": "outside the supported range",
    }
    write_json(tmp_path / "dup.json", {**ISSUE_CATALOG, "customers": ISSUE_CATALOG["customers"] * 2})
    write_json(tmp_path / "nul.json", _catalog(customers=[{"name": "a\x00b"}]))
    write_json(tmp_path / "y9999.json", _catalog(subscriptions=[{"start": "9999-01-01T00:00:00Z"}]))
    for name, message in files.items():
        proc = run_cli(["catalog", "apply", str(tmp_path / name)], env, check=False)
        assert proc.returncode == 1, (name, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, (name, proc.stderr)


# --- against the database -------------------------------------------------------------------------------


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url)
    try:
        upgrade(eng)
        apply_catalog(eng, parse_catalog(ISSUE_CATALOG))
        yield eng
    finally:
        eng.dispose()


def _apply(engine: Engine, catalog: dict[str, Any]) -> None:
    apply_catalog(engine, parse_catalog(json.loads(json.dumps(catalog))))


def _invoice_january(engine: Engine) -> None:
    assert close_due(engine, as_of=CLOSE_AT, grace=timedelta(hours=1), clock=lambda: CLOSE_AT).invoices == 1


@pytest.mark.integration
def test_before_an_invoice_anchor_and_start_may_still_be_corrected(engine: Engine) -> None:
    moved = {"billing_anchor": "2026-01-15T00:00:00Z", "start": "2026-01-15T00:00:00Z"}
    _apply(engine, _catalog(subscriptions=[moved]))
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT billing_anchor, start_at, next_period_start, next_close_at FROM subscriptions")
        ).one()
    jan15, feb15 = datetime(2026, 1, 15, tzinfo=UTC), datetime(2026, 2, 15, tzinfo=UTC)
    assert row == (jan15, jan15, jan15, feb15)  # the cursor starts on the new grid


@pytest.mark.integration
def test_once_usage_is_counted_the_grid_is_fixed(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO usage_totals (organization_id, subscription_id, meter_key, period_start, segment_start, "
            "period_end, quantity, event_count, closed) VALUES ('acme', 'sub_1', 'api_calls', '2026-01-01Z', "
            "'2026-01-01Z', '2026-02-01Z', 5, 5, false)"))
    with pytest.raises(BilledHistoryChange, match=r"billing_anchor cannot change .* once it has usage counted"):
        _apply(engine, _catalog(subscriptions=[{"billing_anchor": "2026-01-15T00:00:00Z"}]))
    with pytest.raises(BilledHistoryChange, match="interval cannot change from month to week"):
        _apply(engine, _catalog(plans=[{"interval": "week"}]))


@pytest.mark.integration
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"subscriptions": [{"billing_anchor": "2026-01-15T00:00:00Z"}]},
            r"^subscription acme/'sub_1': billing_anchor cannot change from 2026-01-01T00:00:00\+00:00 to "
            r"2026-01-15T00:00:00\+00:00 once it is invoiced; cancel it \(`valora subscriptions cancel acme sub_1`\)",
        ),
        ({"subscriptions": [{"start": "2026-01-10T00:00:00Z"}]}, "start cannot change from 2026-01-16"),
        ({"plans": [{"interval": "year"}]}, r"^plan acme/'starter': interval cannot change from month to year: .*"
                                            r"change-plan"),
        ({"plans": [{"interval_count": 2}]}, "interval_count cannot change from 1 to 2"),
        (
            {"organizations": [{"currency": "EUR"}], "plans": [{"currency": "EUR"}]},
            r"^organization 'acme': currency cannot change from USD to EUR: it has invoices in USD",
        ),
    ],
)
def test_billed_history_cannot_be_rewritten(engine: Engine, changes: dict[str, Any], message: str) -> None:
    _invoice_january(engine)
    with pytest.raises(BilledHistoryChange, match=message) as caught:
        _apply(engine, _catalog(**changes))
    assert caught.value.code == "billed_history_change"
    _apply(engine, ISSUE_CATALOG)  # re-applying what was billed is fine
    with engine.connect() as conn:
        assert conn.execute(text("SELECT billing_anchor FROM subscriptions")).scalar_one() == datetime(
            2026, 1, 1, tzinfo=UTC
        )


@pytest.mark.integration
def test_an_organization_currency_cannot_leave_its_plans(engine: Engine) -> None:
    with pytest.raises(InvalidCatalog, match="currency EUR differs from its plan 'starter'"):
        _apply(engine, {"organizations": [{"id": "acme", "name": "Acme Inc", "currency": "EUR"}]})
    _apply(engine, _catalog(organizations=[{"currency": "EUR"}], plans=[{"currency": "EUR"}]))  # together: fine


@pytest.mark.integration
def test_invoice_prefixes_are_unique_across_organizations(engine: Engine, database_url: str) -> None:
    _apply(engine, {"organizations": [{"id": "ac-me", "name": "Other", "currency": "USD"}]})
    with engine.connect() as conn:
        prefixes = dict(conn.execute(text("SELECT id, invoice_prefix FROM organizations")).all())
    assert prefixes["acme"] == "ACME" and prefixes["ac-me"] != "ACME"
    _apply(engine, {"organizations": [{"id": "ac-me", "name": "Other", "currency": "USD"}]})  # stable on re-apply
    with engine.connect() as conn:
        assert conn.execute(text("SELECT invoice_prefix FROM organizations WHERE id = 'ac-me'")).scalar() == prefixes[
            "ac-me"
        ]
    with pytest.raises(InvalidCatalog, match="invoice_prefix 'ACME' is already used by organization 'acme'"):
        _apply(engine, {"organizations": [{"id": "other", "name": "O", "currency": "USD", "invoice_prefix": "ACME"}]})
    with psycopg.connect(database_url.replace("+psycopg", "")) as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("UPDATE organizations SET invoice_prefix = 'ACME' WHERE id = 'ac-me'")
        conn.commit()
    # Given prefixes win over derived ones whatever the order, and two organizations may swap theirs.
    _apply(engine, {"organizations": [{"id": "zz", "name": "Z", "currency": "USD"},
                                      {"id": "y", "name": "Y", "currency": "USD", "invoice_prefix": "ZZ"}]})
    with engine.connect() as conn:
        assert conn.execute(text("SELECT invoice_prefix FROM organizations WHERE id = 'y'")).scalar() == "ZZ"
    _apply(engine, {"organizations": [{"id": "acme", "name": "A", "currency": "USD", "invoice_prefix": "ZZ"},
                                      {"id": "y", "name": "Y", "currency": "USD", "invoice_prefix": "ACME"}]})
    with engine.connect() as conn:
        assert dict(conn.execute(text("SELECT id, invoice_prefix FROM organizations WHERE id IN ('acme', 'y')"))
                    .all()) == {"acme": "ZZ", "y": "ACME"}


@pytest.mark.integration
def test_migration_0009_separates_prefixes_already_shared(database_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    from invoicing.db import MIGRATIONS

    engine = make_engine(database_url)
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0008")
        with engine.begin() as conn:
            for org in ("acme", "ac-me", "a.c.m.e"):
                conn.execute(text(f"INSERT INTO organizations VALUES ('{org}', 'x', 'USD', 30, 'ACME', 0)"))
        upgrade(engine)
        with engine.connect() as conn:
            prefixes = dict(conn.execute(text("SELECT id, invoice_prefix FROM organizations")).all())
        assert len(set(prefixes.values())) == 3 and list(prefixes.values()).count("ACME") == 1
        for org, prefix in prefixes.items():  # the others: the same rule as catalog apply
            assert prefix in ("ACME", default_prefix(org, {"ACME"}))
    finally:
        engine.dispose()


@pytest.mark.integration
def test_a_catalog_of_5000_subscriptions_applies_in_one_transaction(engine: Engine) -> None:
    n = 5000
    big = {
        "customers": [{"organization": "acme", "id": f"c{i}", "name": f"C {i}"} for i in range(n)],
        "subscriptions": [
            {"organization": "acme", "id": f"s{i}", "customer": f"c{i}", "plan": "starter",
             "start": "2026-01-01T00:00:00Z"}
            for i in range(n)
        ],
    }
    _apply(engine, big)
    big["subscriptions"][0]["end"] = "2026-03-01T00:00:00Z"
    _apply(engine, big)  # the update path too
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM subscriptions")).scalar() == n + 1
        assert conn.execute(text("SELECT count(*) FROM subscription_status_history")).scalar() == n + 1
        assert conn.execute(text("SELECT end_at FROM subscriptions WHERE id = 's0'")).scalar() == datetime(
            2026, 3, 1, tzinfo=UTC
        )
