"""`valora events publish` and `valora dead-letters list`: usage events in, rejections out.

`events publish FILE|-` reads JSON Lines (one native or CloudEvents 1.0 event per line),
checks every line with the worker's own decoder (`streams.decode.decode_record`: JSON,
schema, timezone, not too far in the future), and produces the lines that pass to the
events topic keyed by their organization, in file order. A line that does not pass is
reported on stderr as `line N: <reason code>: <detail>` and not produced; the others
still are. It checks the format, not the catalog: an unknown customer is found by the
worker and dead-lettered there (see `valora dead-letters list`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson

from schemas.errors import InvalidInput
from valora.cli_common import load_settings, now_utc, positive_int, resolve_bootstrap

MAX_LINE_BYTES = 1_048_576  # one event's JSON at most; a longer line is rejected, not read whole
MAX_REJECTIONS_SHOWN = 1_000  # past this many, rejections are counted but no longer printed one by one


@dataclass
class PublishCounts:
    lines: int = 0
    blank: int = 0
    published: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def organization_of(value: bytes, default: str | None) -> str | None:
    """A native event's `organization` field, else the `--org` default (CloudEvents: `--org`)."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return default  # the decoder names the JSON error
    named = doc.get("organization") if isinstance(doc, dict) else None
    return named if isinstance(named, str) and named else default


def checked_records(
    stream: IO[bytes],
    counts: PublishCounts,
    *,
    org: str | None,
    now: datetime,
    future_tolerance: Any,
    report: Any,
) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) for every line the worker's decoder accepts; `report(n, code, detail)` for the rest."""
    from streams.decode import Rejection, decode_record

    for number, raw in enumerate(iter(lambda: stream.readline(MAX_LINE_BYTES + 1), b""), start=1):
        counts.lines = number
        line = raw.strip()
        if len(raw) > MAX_LINE_BYTES:
            _skip_rest_of_line(stream, raw)
            _reject(counts, report, number, "too_large", f"line is longer than {MAX_LINE_BYTES:,} bytes")
            continue
        if not line:
            counts.blank += 1
            continue
        key = organization_of(line, org)
        try:  # without an organization, still decode: a JSON or schema error is the better reason
            decode_record((key or "?").encode(), line, now=now, future_tolerance=future_tolerance)
        except Rejection as rejection:
            _reject(counts, report, number, str(rejection.code), rejection.detail)
            continue
        except RecursionError:
            _reject(counts, report, number, "too_deep", "JSON nested too deeply to decode")
            continue
        except Exception as exc:  # one bad line is reported like the others, never a traceback
            _reject(counts, report, number, "schema", f"cannot decode: {type(exc).__name__}: {exc}")
            continue
        if key is None:
            _reject(counts, report, number, "schema", "no organization: add an 'organization' field or pass --org")
            continue
        counts.published += 1
        yield key.encode(), line


def _skip_rest_of_line(stream: IO[bytes], raw: bytes) -> None:
    while not raw.endswith(b"\n"):
        raw = stream.readline(MAX_LINE_BYTES)
        if not raw:
            return


def _reject(counts: PublishCounts, report: Any, number: int, code: str, detail: str) -> None:
    counts.rejected += 1
    counts.reasons[code] = counts.reasons.get(code, 0) + 1
    report(number, code, detail)


def cmd_events_publish(args: argparse.Namespace) -> int:
    from streams.publish import publish
    from valora.progress import Progress

    settings = load_settings()
    topic = args.topic or settings.events_topic
    bootstrap = None if args.dry_run else resolve_bootstrap(settings)
    stream, size = _open(args.file)
    progress = Progress(f"publishing {args.file}", size if size and size > 1_000_000 else None)
    counts = PublishCounts()

    def report(number: int, code: str, detail: str) -> None:
        if counts.rejected <= MAX_REJECTIONS_SHOWN:
            progress.close()
            print(f"line {number}: {code}: {' '.join(detail.split())}", file=sys.stderr)

    records = checked_records(
        stream, counts, org=args.org, now=now_utc(), future_tolerance=settings.future_tolerance, report=report
    )

    def shown(records: Iterator[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
        for record in records:
            yield record
            detail = f"{counts.published:,} published, {counts.rejected:,} rejected"
            progress.update(stream.tell() if size else 0, detail)

    try:
        if bootstrap is None:
            for _ in shown(records):
                pass
        else:
            publish(bootstrap, topic, shown(records))
    finally:
        progress.close()
        if stream is not sys.stdin.buffer:
            stream.close()
    _print_counts(counts, topic, dry_run=args.dry_run, as_json=args.json)
    return 1 if counts.rejected else 0


def _open(name: str) -> tuple[IO[bytes], int | None]:
    if name == "-":
        return sys.stdin.buffer, None
    try:
        stream = Path(name).open("rb")  # noqa: SIM115  # closed by the caller once published
    except OSError as exc:
        raise InvalidInput(f"cannot read {name}: {exc.strerror or exc}") from None
    try:
        return stream, os.fstat(stream.fileno()).st_size
    except OSError:
        return stream, None


def _print_counts(counts: PublishCounts, topic: str, *, dry_run: bool, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"topic": topic, "dry_run": dry_run, **vars(counts)}, sort_keys=True))
        return
    verb = "would publish" if dry_run else "published"
    reasons = ", ".join(f"{code} {n}" for code, n in sorted(counts.reasons.items()))
    print(
        f"{verb} {counts.published:,} event(s) to {topic}; rejected {counts.rejected:,}"
        + (f" ({reasons})" if reasons else "")
        + (f"; {counts.blank:,} blank line(s) skipped" if counts.blank else "")
        + f"; {counts.lines:,} line(s) read"
    )


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from invoicing.dead_letters import list_dead_letters
    from valora.cli_common import connect_engine

    rows = list_dead_letters(
        connect_engine(load_settings()), args.org, code=args.code, topic=args.topic, limit=args.limit
    )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        where = f"{row['topic']}/{row['partition']}@{row['offset']}"
        print(f"{where}  {row['code']}  {' '.join(row['detail'].split())}")
    more = f" (the first {args.limit}; raise --limit)" if len(rows) == args.limit else ""
    print(f"{len(rows)} dead letter(s){more}")
    return 0


def add_events_parsers(sub: Any) -> None:
    """Register `events publish` and `dead-letters list` on the top-level subparsers."""
    from invoicing.dead_letters import MAX_LIST

    events = sub.add_parser("events", help="publish usage events from a JSON Lines file")
    actions = events.add_subparsers(dest="action", required=True, metavar="ACTION")
    pub = actions.add_parser(
        "publish",
        help="check each line with the worker's decoder and produce the good ones, keyed by organization",
    )
    pub.add_argument("file", metavar="FILE", help="JSON Lines of native or CloudEvents events; - reads stdin")
    pub.add_argument("--org", help="organization for lines without an 'organization' field (CloudEvents need it)")
    pub.add_argument("--topic", help="topic to produce to (default: VALORA_EVENTS_TOPIC, usage.events)")
    pub.add_argument("--dry-run", action="store_true", help="check every line, produce nothing")
    pub.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    pub.set_defaults(func=cmd_events_publish)

    dead = sub.add_parser("dead-letters", help="records the worker rejected: why, and where they came from")
    dead_actions = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = dead_actions.add_parser("list", help="an organization's dead letters in log order")
    listing.add_argument("--org", required=True, help="organization id (the record key the worker read)")
    listing.add_argument("--code", help="only this reason code (e.g. unknown_customer; see ARCHITECTURE.md)")
    listing.add_argument("--topic", help="only records from this events topic")
    listing.add_argument(
        "--limit",
        type=positive_int(MAX_LIST),
        default=100,
        help=f"at most this many, 1 to {MAX_LIST:,} (default 100)",
    )
    listing.add_argument("--json", action="store_true", help="print JSON, with each record's value")
    listing.set_defaults(func=cmd_dead_letters)
