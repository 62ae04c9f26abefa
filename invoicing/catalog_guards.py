"""What `valora catalog apply` refuses before it writes: hostile files and rewrites of billed history.

Reading (`read_document`), before any model sees the data:

- a file larger than `MAX_CATALOG_BYTES`, nesting deeper than `MAX_DEPTH`, a NUL byte or a lone
  surrogate in any string (Postgres text cannot hold either), and YAML aliases that expand the document by more
  than `MAX_ALIAS_EXPANSION` nodes (a few hundred bytes of nested aliases otherwise expand
  to billions of nodes) are each one line.

Validating (`check_unique_ids`): the same id twice in one section is one line naming both entries.

Applying, inside the transaction (`check_billed_history`): once a subscription has an invoice,
its `start` and `billing_anchor` are fixed, and so are the `interval`, `interval_count` and
`currency` of every plan it has been billed on, and the currency of an organization with
invoices; changing them would re-grid or re-price periods already invoiced. The refusal names
the field and the way to do it properly. `assign_prefixes` gives every organization an invoice
prefix no other organization uses (the database backs it with a unique constraint).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import yaml
from sqlalchemy import text
from sqlalchemy.orm import Session

from schemas import catalog as c
from schemas.errors import InvalidInput
from schemas.plans import Plan

MAX_CATALOG_BYTES = 256 * 1024 * 1024
MAX_DEPTH = 64
MAX_ALIAS_EXPANSION = 100_000
CHUNK_ROWS = 1000
"""Rows per statement when writing or looking up a catalog: far below Postgres's 65,535 parameters."""


class InvalidCatalog(InvalidInput):
    """A catalog file or entry is malformed, inconsistent, or would rewrite billed history."""

    code = "invalid_catalog"


class BilledHistoryChange(InvalidCatalog):
    """A catalog change that would rewrite periods already invoiced (anchor, start, interval, currency)."""

    code = "billed_history_change"


def chunks(seq: Sequence[Any], size: int = CHUNK_ROWS) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


# --- reading --------------------------------------------------------------------------------------


def read_bounded(path: Any, parse_json: Callable[[str], Any], loader: type[yaml.SafeLoader]) -> Any:
    """Read and decode a catalog file (YAML by extension, else JSON) within the documented limits.

    Raises:
        InvalidCatalog: unreadable, too large, not valid JSON/YAML, too deep, a NUL byte, an alias bomb.
    """
    try:
        size = path.stat().st_size
        if size > MAX_CATALOG_BYTES:
            raise InvalidCatalog(f"catalog {path} is {size} bytes; the limit is {MAX_CATALOG_BYTES}")
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidCatalog(f"cannot read catalog {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidCatalog(f"catalog {path} is not UTF-8: {exc.reason} at byte {exc.start}") from exc
    kind = "YAML" if path.suffix.lower() in (".yaml", ".yml") else "JSON"
    try:
        data = _load_yaml(raw, loader) if kind == "YAML" else parse_json(raw)
    except RecursionError:
        raise InvalidCatalog(f"catalog {path} is nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, yaml.YAMLError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise InvalidCatalog(f"catalog {path} is not valid {kind}: {first}") from exc
    return data  # `parse_catalog` checks depth and NUL bytes, for files and decoded documents alike


def _load_yaml(raw: str, loader_cls: type[yaml.SafeLoader]) -> Any:
    """Compose the YAML node graph, measure what its aliases expand to, and only then build objects."""
    loader = loader_cls(raw)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded, written = _expansion(node)
        if expanded - written > MAX_ALIAS_EXPANSION:
            raise InvalidCatalog(
                f"catalog YAML aliases expand {written} written nodes to {expanded}; aliases may add at most "
                f"{MAX_ALIAS_EXPANSION} nodes"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _expansion(root: yaml.Node) -> tuple[int, int]:
    """(nodes once every alias is expanded, distinct nodes), without expanding anything.

    Iterative post-order with a memo per node, so shared subtrees are measured once; a
    recursive alias (a node inside itself) expands without end and is refused.
    """
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(child)] for child in _children(node))
            if size[key] > MAX_ALIAS_EXPANSION * 100:
                return size[key], len(size)
            continue
        if key in size:
            continue
        if key in on_path:
            raise InvalidCatalog("catalog YAML has an alias inside its own anchor (a recursive structure)")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in size)
    return size[id(root)], len(size)


def check_document(data: Any) -> None:
    """Refuse nesting deeper than `MAX_DEPTH` and NUL bytes in any key or string, naming the place.

    Raises:
        InvalidCatalog: with the path of the offending value, e.g. `customers[3].name`.
    """
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            shown = where if len(where) <= 80 else where[:80] + "…"
            raise InvalidCatalog(f"catalog is nested deeper than {MAX_DEPTH} levels at {shown}")
        if isinstance(value, str):
            _check_text(value, where or "value")
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str):
                    _check_text(key, f"{where or 'top level'} key")
                stack.append((item, f"{where}.{key}" if where else str(key), depth + 1))
        elif isinstance(value, list | tuple):
            stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _check_text(value: str, where: str) -> None:
    """Postgres text holds neither NUL nor a lone UTF-16 surrogate (which JSON's \\ud800 escapes can make)."""
    found = _UNSTORABLE.search(value)
    if found is not None:
        what = "NUL byte (\\u0000)" if found.group() == "\x00" else f"lone surrogate (\\u{ord(found.group()):04x})"
        raise InvalidCatalog(f"catalog {where}: {what} in a string")


# --- validating -----------------------------------------------------------------------------------


def check_unique_ids(section: str, ids: Iterable[tuple[str, ...]]) -> None:
    """Refuse the same id twice in one section: which of the two entries would win is a guess.

    Raises:
        InvalidCatalog: names the id and both positions.
    """
    seen: dict[tuple[str, ...], int] = {}
    for index, key in enumerate(ids):
        if key in seen:
            name = "/".join((*key[:-1], repr(key[-1])))
            raise InvalidCatalog(
                f"{section[:-1]} {name} appears twice in {section} ({section}[{seen[key]}] and {section}[{index}])"
            )
        seen[key] = index


# --- billed history -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredSubscription:
    """What the database holds for a catalog subscription, read before the catalog writes."""

    start: datetime
    anchor: datetime
    end: datetime | None
    plan: str
    billed: str | None  # "invoiced", "has usage counted", or None: nothing depends on its grid yet


def stored_subscriptions(session: Session, subs: Sequence[c.Subscription]) -> dict[tuple[str, str], StoredSubscription]:
    """The stored rows of the catalog's subscriptions that already exist (one query per 20,000)."""
    out: dict[tuple[str, str], StoredSubscription] = {}
    for part in chunks(subs, 20_000):
        rows = session.execute(
            text(
                "SELECT s.organization_id, s.id, s.start_at, s.billing_anchor, s.end_at, s.plan_code, CASE "
                "WHEN EXISTS (SELECT 1 FROM invoices i WHERE i.organization_id = s.organization_id "
                "AND i.subscription_id = s.id) THEN 'invoiced' "
                "WHEN EXISTS (SELECT 1 FROM usage_totals t WHERE t.organization_id = s.organization_id "
                "AND t.subscription_id = s.id) THEN 'has usage counted' END "
                "FROM subscriptions s JOIN unnest(CAST(:o AS text[]), CAST(:s AS text[])) AS u(o, s) "
                "ON s.organization_id = u.o AND s.id = u.s"
            ),
            {"o": [x.organization for x in part], "s": [x.id for x in part]},
        )
        out.update({(org, sid): StoredSubscription(*rest) for org, sid, *rest in rows})
    return out


def check_billed_history(
    session: Session,
    cat: Any,
    stored: dict[tuple[str, str], StoredSubscription],
    anchor_of: Callable[[c.Subscription], datetime],
    stored_plans: dict[tuple[str, str], Plan],
) -> None:
    """Refuse changes to what invoiced periods (or counted usage) were computed from.

    A subscription's start and anchor lay out its period grid; once it is invoiced, or usage
    is counted in its periods, moving the grid would bill time twice or strand counted usage.
    `stored` holds the rows before the catalog, `anchor_of` the anchor the catalog would
    write, `stored_plans` the plans the database holds for the catalog's plan codes.

    Raises:
        BilledHistoryChange: names the entry, the field, old and new values, and what to do instead.
    """
    for sub in cat.subscriptions:
        old = stored.get((sub.organization, sub.id))
        if old is None or old.billed is None:
            continue
        label = f"subscription {sub.organization}/{sub.id!r}"
        remedy = f"cancel it (`valora subscriptions cancel {sub.organization} {sub.id}`) and subscribe again"
        if sub.start != old.start:
            raise BilledHistoryChange(
                f"{label}: start cannot change from {old.start.isoformat()} to {sub.start.isoformat()} once it "
                f"{_is(old.billed)}; {remedy}"
            )
        if anchor_of(sub) != old.anchor:
            raise BilledHistoryChange(
                f"{label}: billing_anchor cannot change from {old.anchor.isoformat()} to "
                f"{anchor_of(sub).isoformat()} once it {_is(old.billed)}; {remedy}"
            )
    _check_billed_currencies(session, cat)
    _check_billed_plans(session, cat, stored_plans)


def _check_billed_plans(session: Session, cat: Any, stored: dict[tuple[str, str], Plan]) -> None:
    for org, plan in cat.plans:
        old = stored.get((org, plan.code))
        if old is None:
            continue
        changes = [
            (name, getattr(old, name), getattr(plan, name))
            for name in ("interval", "interval_count", "currency")
            if getattr(old, name) != getattr(plan, name)
        ]
        if not changes or not _plan_billed(session, org, plan.code, "interval" in changes[0][0]):
            continue
        name, before, after = changes[0]
        raise BilledHistoryChange(
            f"plan {org}/{plan.code!r}: {name} cannot change from {before} to {after}: subscriptions on it are "
            "invoiced or have usage counted; create a plan under a new code and move subscriptions with "
            "`valora subscriptions change-plan` (same interval and currency) or cancel and subscribe again"
        )


def _plan_billed(session: Session, org: str, code: str, usage_counts: bool) -> bool:
    """Whether an invoiced subscription (or, for the grid, one with usage counted) is or was on the plan."""
    billed = (
        "EXISTS (SELECT 1 FROM invoices i WHERE i.organization_id = s.organization_id AND i.subscription_id = s.id)"
    )
    if usage_counts:
        billed += (
            " OR EXISTS (SELECT 1 FROM usage_totals t WHERE t.organization_id = s.organization_id "
            "AND t.subscription_id = s.id)"
        )
    return bool(
        session.execute(
            text(
                f"SELECT EXISTS (SELECT 1 FROM subscriptions s WHERE s.organization_id = :o AND ({billed}) AND "
                "(s.plan_code = :c OR EXISTS (SELECT 1 FROM subscription_plan_changes p WHERE p.organization_id = :o "
                "AND p.subscription_id = s.id AND (p.to_plan = :c OR p.from_plan = :c))))"
            ),
            {"o": org, "c": code},
        ).scalar()
    )


def _is(billed: str) -> str:
    return "is invoiced" if billed == "invoiced" else "has usage counted"


def _check_billed_currencies(session: Session, cat: Any) -> None:
    """An organization's currency stays that of its invoices, and always that of its plans."""
    if not cat.organizations:
        return
    rows = session.execute(
        text(
            "SELECT o.id, o.currency, EXISTS (SELECT 1 FROM invoices i WHERE i.organization_id = o.id) "
            "FROM organizations o WHERE o.id = ANY(CAST(:ids AS text[]))"
        ),
        {"ids": [o.id for o in cat.organizations]},
    )
    stored = {org: (currency, billed) for org, currency, billed in rows}
    in_file = {(org, p.code) for org, p in cat.plans}
    for org in cat.organizations:
        before, billed = stored.get(org.id, (org.currency, False))
        if before == org.currency:
            continue
        if billed:
            raise BilledHistoryChange(
                f"organization {org.id!r}: currency cannot change from {before} to {org.currency}: it has "
                f"invoices in {before}; create a new organization for {org.currency}"
            )
        for (code,) in session.execute(
            text("SELECT code FROM plans WHERE organization_id = :o AND currency <> :cur ORDER BY code"),
            {"o": org.id, "cur": org.currency},
        ):
            if (org.id, code) not in in_file:
                raise InvalidCatalog(
                    f"organization {org.id!r}: currency {org.currency} differs from its plan {code!r}; "
                    "change the plans' currency in the same catalog"
                )


# --- invoice prefixes -----------------------------------------------------------------------------


def default_prefix(org_id: str, taken: set[str]) -> str:
    """The organization's id in capitals without punctuation, unless another organization has it.

    Then (`acme` holds ACME, `ac-me` asks) the first 7 characters plus 5 of the id's SHA-256
    in hex (ACME3F2A1), and a counter after that in the unlikely event that is taken too.
    The database's unique constraint on the prefix is the backstop.
    """
    base = "".join(ch for ch in org_id.upper() if ch.isascii() and ch.isalnum())[:12] or "INV"
    if base not in taken:
        return base
    digest = hashlib.sha256(org_id.encode()).hexdigest().upper()
    for salt in range(len(digest) - 5):
        candidate = base[:7] + digest[salt : salt + 5]
        if candidate not in taken:
            return candidate
    raise InvalidCatalog(f"organization {org_id!r}: no free invoice prefix; set invoice_prefix")


def assign_prefixes(session: Session, orgs: Sequence[c.Organization]) -> dict[str, str]:
    """Each catalog organization's invoice prefix: the one given, else the stored one, else a free default.

    Given prefixes are placed first (a prefix the catalog moves away from is free for them),
    then defaults are derived around everything taken, so the outcome does not depend on order.

    Raises:
        InvalidCatalog: a given prefix another organization uses.
    """
    stored: dict[str, str] = {
        org: prefix for org, prefix in session.execute(text("SELECT id, invoice_prefix FROM organizations"))
    }
    given = {o.id: o.invoice_prefix for o in orgs if o.invoice_prefix}
    owner = {prefix: org for org, prefix in stored.items() if given.get(org, prefix) == prefix}
    out: dict[str, str] = {}
    for org_id, prefix in given.items():
        holder = owner.get(prefix)
        if holder is not None and holder != org_id:
            raise InvalidCatalog(
                f"organization {org_id!r}: invoice_prefix {prefix!r} is already used by organization {holder!r}; "
                "invoice numbers must be unique across organizations"
            )
        out[org_id] = prefix
        owner[prefix] = org_id
    for org in orgs:
        if org.id not in out:
            out[org.id] = stored.get(org.id) or default_prefix(org.id, set(owner))
            owner[out[org.id]] = org.id
    return out
