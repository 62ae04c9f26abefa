"""Every CLI failure is one line: the real `valora` executable, a table of bad inputs.

Each case runs the installed `valora` console script in a subprocess and asserts exactly
one line on stderr, no traceback, a non-zero exit, and a phrase that says what is wrong.
The cases without a database never reach one (settings and arguments are checked first);
the rest share one database with one closed invoice.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ISSUE_CATALOG, cli_env, write_json
from valora.cli import build_parser

VALORA = shutil.which("valora", path=str(Path(sys.executable).parent)) or "valora"


def _run(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VALORA, *args], env=env, capture_output=True, text=True, timeout=120, cwd=cwd)


def _assert_one_line(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0], lines[0]


# (extra environment, arguments, what the line must say)
WITHOUT_DATABASE: list[tuple[dict[str, str], list[str], str]] = [
    ({"VALORA_METRICS_PORT": "abc"}, ["worker"], "VALORA_METRICS_PORT='abc' is not a whole number"),
    ({"VALORA_METRICS_PORT": "70000"}, ["scheduler", "--once"], "VALORA_METRICS_PORT='70000' is out of range"),
    ({"VALORA_DATABASE_URL": "notaurl"}, ["invoices", "list", "--org", "acme"], "VALORA_DATABASE_URL is not a"),
    ({"VALORA_DATABASE_URL": "mysql://u@h/db"}, ["db", "upgrade"], "Valora needs Postgres"),
    ({"VALORA_KAFKA_BOOTSTRAP": "no port"}, ["worker"], "VALORA_KAFKA_BOOTSTRAP='no port' is not a list"),
    ({"VALORA_KAFKA_BOOTSTRAP": "kafka:99999"}, ["worker"], "VALORA_KAFKA_BOOTSTRAP"),
    ({"VALORA_TOPIC_PARTITIONS": "0"}, ["worker"], "VALORA_TOPIC_PARTITIONS='0' is out of range (1 to 1024)"),
    ({"VALORA_BATCH_MAX": "-5"}, ["worker"], "VALORA_BATCH_MAX='-5' is out of range"),
    ({"VALORA_SESSION_TIMEOUT_MS": "soon"}, ["worker"], "VALORA_SESSION_TIMEOUT_MS='soon' is not a whole number"),
    ({"VALORA_LATE_GRACE": "forever"}, ["close"], "VALORA_LATE_GRACE='forever' is not a duration"),
    ({"VALORA_LATE_GRACE": "999999999d"}, ["close"], "VALORA_LATE_GRACE='999999999d' is out of range"),
    ({"VALORA_FUTURE_TOLERANCE": "-5m"}, ["worker"], "VALORA_FUTURE_TOLERANCE='-5m' is not a duration"),
    ({"VALORA_EVENTS_TOPIC": "usage events"}, ["worker"], "VALORA_EVENTS_TOPIC='usage events' is not a Kafka topic"),
    ({"VALORA_DLQ_TOPIC": "x" * 250}, ["worker"], "VALORA_DLQ_TOPIC="),
    ({"VALORA_TOTALS_TOPIC": "a/b"}, ["worker"], "VALORA_TOTALS_TOPIC='a/b' is not a Kafka topic"),
    ({"VALORA_CONSUMER_GROUP": "my group"}, ["worker"], "VALORA_CONSUMER_GROUP='my group' must be"),
    ({"VALORA_LOG_LEVEL": "loud"}, ["worker"], "VALORA_LOG_LEVEL='loud' is not one of"),
    ({}, ["close", "--batch", "-1"], "argument --batch: -1 is out of range (1 to 100,000)"),
    ({}, ["close", "--batch", "0"], "argument --batch: 0 is out of range"),
    ({}, ["close", "--batch", "lots"], "argument --batch: 'lots' is not a whole number"),
    ({}, ["close", "--as-of", "0001-01-01T00:00:00Z"], "'0001-01-01T00:00:00Z' is out of range (1970 to 2199)"),
    ({}, ["close", "--as-of", "9999-12-31T23:59:59Z"], "'9999-12-31T23:59:59Z' is out of range"),
    ({}, ["close", "--as-of", "9999-12-31T23:59:59-05:00"], "is out of range"),
    ({}, ["close", "--as-of", "yesterday"], "'yesterday' is not an RFC 3339 time"),
    ({}, ["close", "--as-of", "2026-02-01T00:00:00"], "needs a timezone"),
    ({}, ["scheduler", "--batch", "0"], "argument --batch: 0 is out of range"),
    ({}, ["scheduler", "--tick", "-1"], "argument --tick: -1 is out of range"),
    ({}, ["scheduler", "--budget", "nan"], "argument --budget: nan is out of range"),
    ({}, ["usage", "--org", "acme", "--at", "0001-01-01T00:00:00Z"], "argument --at: '0001-01-01T00:00:00Z'"),
    ({}, ["invoices", "mark-paid", "X", "--at", "99999-01-01T00:00:00Z"], "argument --at:"),
    ({}, ["subscriptions", "cancel", "acme", "s", "--at", "never"], "argument --at: 'never'"),
    ({}, ["subscriptions", "change-plan", "acme", "s", "--plan", "p", "--at", "0001-01-01T00:00:00+01:00"], "--at"),
    ({}, ["bench", "close", "--subscriptions", "0"], "argument --subscriptions: 0 is out of range"),
    ({}, ["bench", "pipeline", "--events", "-3"], "argument --events: -3 is out of range"),
    ({}, ["bench", "pipeline", "--events", "100"], "--events 100 is too few to measure throughput"),
    ({}, ["demo", "--events", "0"], "argument --events: 0 is out of range"),
    ({}, ["quote", "--plan", "/missing/plan.json", "--period-start", "2026-01-01T00:00:00Z",
          "--period-end", "2026-02-01T00:00:00Z"], "/missing/plan.json: no such file"),
    ({}, ["quote", "--plan", "p.json", "--period-start", "0001-01-01T00:00:00Z",
          "--period-end", "2026-02-01T00:00:00Z"], "argument --period-start"),
    ({}, ["catalog", "apply", "/missing/catalog.json"], "cannot read catalog /missing/catalog.json"),
    ({}, ["invoices", "list"], "the following arguments are required: --org"),
    ({}, ["nonsense"], "invalid choice: 'nonsense'"),
    ({}, [], "the following arguments are required: COMMAND"),
    ({}, ["invoices", "list", "--org", "acme"], "no database configured"),
    ({}, ["worker", "--until-idle"], "no database configured"),
]


@pytest.mark.parametrize(("extra", "args", "needle"), WITHOUT_DATABASE, ids=lambda v: str(v)[:60])
def test_bad_settings_and_arguments_are_one_line(
    extra: dict[str, str], args: list[str], needle: str, tmp_path: Path
) -> None:
    env = cli_env(None, None, "oneline.", VALORA_STATE_DIR=str(tmp_path / "state"), **extra)
    _assert_one_line(_run(args, env), needle)


@pytest.fixture
def closed_invoice_env(database_url: str, topic_prefix: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A database with the issue's catalog and January closed: one issued invoice, ACME-2026-000001."""
    env = cli_env(None, database_url, topic_prefix, VALORA_STATE_DIR=str(tmp_path / "state"))
    for args in (
        ["db", "upgrade"],
        ["catalog", "apply", str(write_json(tmp_path / "catalog.json", ISSUE_CATALOG))],
        ["close", "--as-of", "2026-02-01T01:00:00Z"],
    ):
        proc = _run(args, env)
        assert proc.returncode == 0, proc.stderr
    yield env


@pytest.mark.integration
def test_failures_against_a_database_are_one_line(closed_invoice_env: dict[str, str], tmp_path: Path) -> None:
    env = closed_invoice_env
    cases: list[tuple[list[str], str]] = [
        (["invoices", "show", "ACME-2026-000001", "--html", "--out", "/missing/dir/x.html"],
         "cannot write /missing/dir/x.html: No such file or directory"),
        (["invoices", "show", "ACME-2026-000001", "--out", str(tmp_path)], f"cannot write {tmp_path}"),
        (["invoices", "show", "ACME-2026-999999"], "no invoice with number or id 'ACME-2026-999999'"),
        (["usage", "--org", "nope"], "no organization 'nope'"),
        (["usage", "--org", "acme", "--customer", "nobody"], "organization 'acme' has no customer 'nobody'"),
        (["invoices", "list", "--org", "nope"], "no organization 'nope'"),
        (["close", "--org", "nope", "--as-of", "2026-02-01T01:00:00Z"], "no organization 'nope'"),
        (["invoices", "issue", "ACME-2026-000001"], "ACME-2026-000001"),
        (["subscriptions", "show", "acme", "sub_nope"], "sub_nope"),
        (["close", "--batch", "-1"], "argument --batch"),
    ]
    for args, needle in cases:
        _assert_one_line(_run(args, env), needle)
    shown = _run(["invoices", "show", "ACME-2026-000001"], env)
    assert shown.returncode == 0 and shown.stdout.startswith("ACME-2026-000001  in_"), shown


def test_dev_status_finds_the_state_dir_from_any_folder(tmp_path: Path) -> None:
    """Without VALORA_STATE_DIR the state dir is the project's `.valora`, whatever the working directory."""
    from valora.settings import Settings

    env = {k: v for k, v in cli_env(None, None, "anyfolder.").items() if k != "VALORA_STATE_DIR"}
    project_state = Settings.from_env(env).state_dir
    assert project_state == Path(__file__).resolve().parents[1] / ".valora"
    here, elsewhere = _run(["dev", "status"], env), _run(["dev", "status"], env, cwd=tmp_path)
    assert (here.returncode, here.stdout) == (elsewhere.returncode, elsewhere.stdout)
    assert not (tmp_path / ".valora").exists() and list(tmp_path.iterdir()) == []


def _options(parser: argparse.ArgumentParser, path: str = "valora") -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_help_documents_every_option() -> None:
    undocumented = [
        f"{path} {'/'.join(action.option_strings) or action.dest}"
        for path, action in _options(build_parser())
        if not (action.help or "").strip()
    ]
    assert undocumented == []
    assert len(list(_options(build_parser()))) > 80  # the walk reached every subcommand


def test_the_cli_actor_is_the_os_user_or_plain_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    import getpass

    from valora.cli_billing import _default_actor

    monkeypatch.setattr(getpass, "getuser", lambda: "alice")
    assert _default_actor() == "cli:alice"

    def no_user() -> str:
        raise OSError("No username set in the environment")

    monkeypatch.setattr(getpass, "getuser", no_user)
    assert _default_actor() == "cli"


def test_a_hostile_line_in_events_publish_is_one_rejection_line(tmp_path: Path) -> None:
    """Nesting that overflows the decoder's recursion is a rejected line, not a crash."""
    deep = '{"id": "x", "type": "t", "customer": "c", "time": "2026-01-01T00:00:00Z", "properties": '
    path = tmp_path / "deep.jsonl"
    path.write_text(deep + '{"a": ' * 5000 + "1" + "}" * 5000 + "}\n")
    env = cli_env(None, None, "oneline.", VALORA_STATE_DIR=str(tmp_path / "state"))
    proc = _run(["events", "publish", str(path), "--org", "acme", "--dry-run"], env)
    _assert_one_line(proc, "line 1: ")
    assert "rejected 1" in proc.stdout
