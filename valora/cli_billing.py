"""`valora invoices` (and credit notes), `valora subscriptions`, `valora usage`: reading and changing billing state."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from schemas.errors import InvalidInput
from valora.cli_common import connect_engine, load_settings, now_utc, parse_time
from valora.cli_reissue import add_reissue_parser


def cmd_invoices(args: argparse.Namespace) -> int:
    from invoicing.lookup import require_organization
    from invoicing.queries import list_invoices
    from valora.render import invoice_table

    engine = connect_engine(load_settings())
    require_organization(engine, args.org, args.customer)
    invoices = list_invoices(engine, args.org, args.customer)
    if args.json:
        print(json.dumps(invoices, indent=2))
    else:
        print(invoice_table(invoices))
    return 0


INVOICE_ACTIONS = {
    "issue": "issue a draft: next gapless number, issued and due dates",
    "void": "void a draft, issued or uncollectible invoice",
    "mark-paid": "record the payment of an issued or uncollectible invoice",
    "mark-uncollectible": "write off an issued invoice",
}
DEFAULT_REASONS = {"issue": "issued by hand", "mark-paid": "payment recorded"}


def cmd_invoice_state(args: argparse.Namespace) -> int:
    from invoicing import commands
    from invoicing.lookup import resolve_invoice_id

    engine = connect_engine(load_settings())
    command = {
        "issue": commands.issue_invoice,
        "void": commands.void_invoice,
        "mark-paid": commands.mark_paid,
        "mark-uncollectible": commands.mark_uncollectible,
    }[args.action]
    invoice = command(
        engine,
        resolve_invoice_id(engine, args.invoice_id, organization=args.org),
        now=args.at or now_utc(),
        actor=args.actor or _default_actor(),
        reason=args.reason or DEFAULT_REASONS[args.action],
    )
    if args.json:
        print(json.dumps(invoice, indent=2))
    else:
        print(f"{invoice['id']}  {invoice['number'] or '(draft)'}  {invoice['status']}")
    return 0


def _default_actor() -> str:
    """`cli:<OS user name>` (from the login name or the password database), else plain `cli`."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError, ImportError):  # no login name and no passwd entry (some containers)
        return "cli"
    return f"cli:{user}" if user else "cli"


def cmd_invoice_credit(args: argparse.Namespace) -> int:
    from invoicing.credit_notes import CreditAll, CreditAmount, CreditLines, credit_invoice, parse_credit_amount
    from invoicing.lookup import resolve_invoice_id
    from rating.money import format_minor

    request: CreditAll | CreditLines | CreditAmount
    if args.all:
        request = CreditAll()
    elif args.line:
        request = CreditLines(tuple(args.line))
    else:
        request = CreditAmount(parse_credit_amount(args.amount))
    engine = connect_engine(load_settings())
    note = credit_invoice(
        engine,
        resolve_invoice_id(engine, args.invoice_id, organization=args.org),
        request,
        now=args.at or now_utc(),
        actor=args.actor or _default_actor(),
        reason=args.reason,
        organization=args.org,
    )
    if args.json:
        print(json.dumps(note, indent=2))
    else:
        total = format_minor(note["total_minor"], note["currency"])
        print(f"{note['number']}  credits {note['invoice_number']}  {total} {note['currency']}  {note['id']}")
    return 0


def cmd_credit_note_show(args: argparse.Namespace) -> int:
    from invoicing.commands import invoice_parties
    from invoicing.credit_notes import get_credit_note
    from invoicing.html import render_credit_note_html
    from valora.render import amount_rows

    engine = connect_engine(load_settings())
    note = get_credit_note(engine, args.credit_note, organization=args.org)
    if args.html:
        organization_name, customer_name = invoice_parties(engine, note["invoice"])
        out = render_credit_note_html(note, organization_name=organization_name, customer_name=customer_name)
    elif args.json:
        out = json.dumps(note, indent=2) + "\n"
    else:
        cur = note["currency"]
        rows = [f"{note['number']}  credits {note['invoice_number']}  {note['issued_at']}  {note['reason']}"]
        for ln in note["lines"]:
            rows += amount_rows(ln["description"], ln["amount_minor"], cur)
        rows += amount_rows("Total credited", note["total_minor"], cur)
        out = "\n".join(rows) + "\n"
    _write_out(out, args.out)
    return 0


def _write_out(out: str, path: str | None) -> None:
    if path:
        try:
            Path(path).write_text(out, encoding="utf-8")
        except OSError as exc:
            raise InvalidInput(f"cannot write {path}: {exc.strerror or exc}") from None
        print(f"wrote {path}")
    else:
        sys.stdout.write(out)


def cmd_invoice_show(args: argparse.Namespace) -> int:
    from invoicing.commands import get_invoice, invoice_parties
    from invoicing.html import render_invoice_html
    from invoicing.lookup import resolve_invoice_id
    from valora.render import invoice_table

    engine = connect_engine(load_settings())
    invoice_id = resolve_invoice_id(engine, args.invoice_id, organization=args.org)
    invoice = get_invoice(engine, invoice_id)
    if args.html:
        organization_name, customer_name = invoice_parties(engine, invoice_id)
        out = render_invoice_html(invoice, organization_name=organization_name, customer_name=customer_name)
    elif args.json:
        out = json.dumps(invoice, indent=2) + "\n"
    else:
        out = invoice_table([invoice]) + "\n"
    _write_out(out, args.out)
    return 0


def _subscription_text(sub: dict[str, Any]) -> str:
    scheduled = f" (cancel scheduled for {sub['end_at']})" if sub["cancel_at_period_end"] else ""
    lines = [
        f"{sub['organization']}/{sub['id']}  {sub['status']}{scheduled}  plan {sub['plan']}  "
        f"customer {sub['customer']}",
        f"  start {sub['start_at']}  trial end {sub['trial_end'] or '-'}  end {sub['end_at'] or '-'}  "
        f"next close {sub['next_close_at'] or '-'}",
    ]
    for h in sub["status_history"]:
        lines.append(f"  {h['seq']:>3}  {h['at']}  {h['from'] or '-'} → {h['to']}  {h['actor']}: {h['reason']}")
    for c in sub["plan_changes"]:
        lines.append(f"  plan {c['from']} → {c['to']} from {c['effective_at']}  {c['actor']}: {c['reason']}")
    return "\n".join(lines)


def cmd_subscriptions(args: argparse.Namespace) -> int:
    from invoicing import subscriptions as subs

    engine = connect_engine(load_settings())
    if args.action == "show":
        sub = subs.get_subscription(engine, args.org, args.subscription)
    elif args.action == "change-plan":
        from invoicing.plan_changes import change_plan

        now = now_utc()
        sub = change_plan(
            engine,
            args.org,
            args.subscription,
            args.plan,
            at=args.at or now,
            now=now,
            actor=args.actor or _default_actor(),
            reason=args.reason or "requested by hand",
        )
    else:
        if args.action == "revoke-cancel":
            command = subs.revoke_cancel
        else:
            command = subs.schedule_cancel if args.at_period_end else subs.cancel_now
        sub = command(
            engine,
            args.org,
            args.subscription,
            now=args.at or now_utc(),
            actor=args.actor or _default_actor(),
            reason=args.reason or "requested by hand",
        )
    print(json.dumps(sub, indent=2) if args.json else _subscription_text(sub))
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from invoicing.lookup import require_organization
    from invoicing.usage import late_usage, running_totals

    engine = connect_engine(load_settings())
    require_organization(engine, args.org, args.customer)
    if args.late:
        rows = late_usage(engine, args.org, args.customer)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                billed = r["billed_on_invoice"] or "not yet billed"
                print(f"{r['subscription']}  {r['meter']}  {r['period_start'][:10]}  {r['quantity']}  {billed}")
            print(f"{len(rows)} late usage record(s)")
        return 0
    totals = running_totals(engine, args.org, at=args.at or now_utc(), customer=args.customer)
    if args.json:
        print(json.dumps(totals, indent=2))
    else:
        from invoicing.html import billing_window
        from rating.money import format_minor

        for t in totals:
            meters = ", ".join(f"{k} {v}" for k, v in t["meters"].items()) or "no usage"
            print(
                f"{t['subscription']}  {t['customer']}  {billing_window(t['period_start'], t['period_end'])}  "
                f"{meters}  so far {format_minor(t['total_minor'], t['currency'])} {t['currency']}"
            )
    return 0


def _add_credit_parsers(inv_actions: Any) -> None:
    credit = inv_actions.add_parser(
        "credit", help="issue a credit note against an issued or paid invoice: all of it, whole lines, or an amount"
    )
    credit.add_argument("invoice_id", metavar="NUMBER_OR_ID", help="invoice number or id")
    credit.add_argument("--reason", required=True, help="why; printed on the credit note")
    what = credit.add_mutually_exclusive_group(required=True)
    what.add_argument("--all", action="store_true", help="credit everything that remains creditable")
    what.add_argument(
        "--line", action="append", metavar="LINE_KEY", help="credit what remains of this line (repeatable)"
    )
    what.add_argument("--amount", metavar="DECIMAL", help="credit exactly this amount in the invoice's currency")
    credit.add_argument("--org", help="the organization that must own the invoice (and picks among equal numbers)")
    credit.add_argument("--actor", help="who issued it (default: cli:<OS user name>)")
    credit.add_argument("--at", type=parse_time, default=None, help="RFC 3339 issue time (default: now)")
    credit.add_argument("--json", action="store_true", help="print the credit note as JSON")
    credit.set_defaults(func=cmd_invoice_credit)

    show = inv_actions.add_parser("show-credit-note", help="one credit note as text, JSON, or a standalone HTML page")
    show.add_argument("credit_note", metavar="NUMBER_OR_ID", help="credit note number or id")
    show.add_argument("--org", help="the organization, when several use the same number")
    show_format = show.add_mutually_exclusive_group()
    show_format.add_argument("--json", action="store_true", help="print JSON")
    show_format.add_argument("--html", action="store_true", help="print a standalone HTML page")
    show.add_argument("--out", metavar="FILE", help="write to this file instead of stdout")
    show.set_defaults(func=cmd_credit_note_show)


def add_billing_parsers(sub: Any) -> None:
    """Register the invoices, subscriptions and usage subcommands on the top-level subparsers."""
    inv = sub.add_parser("invoices", help="list and show invoices, and move them through their lifecycle")
    inv_actions = inv.add_subparsers(dest="action", required=True)
    inv_list = inv_actions.add_parser("list", help="an organization's invoices")
    inv_list.add_argument("--org", required=True, help="organization id")
    inv_list.add_argument("--customer", help="only this customer's invoices")
    inv_list.add_argument("--json", action="store_true", help="print the invoices as JSON")
    inv_list.set_defaults(func=cmd_invoices)

    show = inv_actions.add_parser("show", help="one invoice as a table, JSON, or a standalone HTML page")
    show.add_argument("invoice_id", metavar="NUMBER_OR_ID", help="invoice number (e.g. ACME-2026-000001) or id")
    show.add_argument("--org", help="the organization, when several use the same number")
    show_format = show.add_mutually_exclusive_group()
    show_format.add_argument("--json", action="store_true", help="print JSON")
    show_format.add_argument("--html", action="store_true", help="print a standalone HTML page")
    show.add_argument("--out", metavar="FILE", help="write to this file instead of stdout")
    show.set_defaults(func=cmd_invoice_show)

    for action, help_text in INVOICE_ACTIONS.items():
        change = inv_actions.add_parser(action, help=help_text)
        change.add_argument("invoice_id", metavar="NUMBER_OR_ID", help="invoice number or id")
        change.add_argument("--org", help="the organization, when several use the same number")
        default_reason = DEFAULT_REASONS.get(action)
        change.add_argument(
            "--reason",
            required=default_reason is None,
            help="recorded in the status history" + (f" (default: {default_reason!r})" if default_reason else ""),
        )
        change.add_argument("--actor", help="who made the change (default: cli:<OS user name>)")
        change.add_argument("--at", type=parse_time, default=None, help="RFC 3339 time of the change (default: now)")
        change.add_argument("--json", action="store_true", help="print the invoice as JSON")
        change.set_defaults(func=cmd_invoice_state)

    _add_credit_parsers(inv_actions)
    add_reissue_parser(inv_actions)

    subs = sub.add_parser(
        "subscriptions", help="show a subscription, cancel it now or at period end, revoke a cancel, change its plan"
    )
    subs_actions = subs.add_subparsers(dest="action", required=True)
    subs_show = subs_actions.add_parser("show", help="one subscription with its status history")
    subs_show.add_argument("org", metavar="ORG", help="organization id")
    subs_show.add_argument("subscription", metavar="SUB", help="subscription id")
    subs_show.add_argument("--json", action="store_true", help="print the subscription as JSON")
    subs_show.set_defaults(func=cmd_subscriptions)
    subs_help = {
        "cancel": "cancel now (the close bills a final, prorated invoice), or with --at-period-end when it ends",
        "revoke-cancel": "keep renewing: revoke a cancel scheduled for the period's end, before that end",
    }
    for action, help_text in subs_help.items():
        change = subs_actions.add_parser(action, help=help_text)
        change.add_argument("org", metavar="ORG", help="organization id")
        change.add_argument("subscription", metavar="SUB", help="subscription id")
        if action == "cancel":
            change.add_argument("--at-period-end", action="store_true", help="end at the current period's end instead")
        change.add_argument("--reason", help="recorded in the status history")
        change.add_argument("--actor", help="who made the change (default: cli:<OS user name>)")
        change.add_argument("--at", type=parse_time, default=None, help="RFC 3339 time of the change (default: now)")
        change.add_argument("--json", action="store_true", help="print the subscription as JSON")
        change.set_defaults(func=cmd_subscriptions)

    plan_change = subs_actions.add_parser(
        "change-plan",
        help="bill under another plan from now (or --at) on: the period splits there, prorated to the second",
    )
    plan_change.add_argument("org", metavar="ORG", help="organization id")
    plan_change.add_argument("subscription", metavar="SUB", help="subscription id")
    plan_change.add_argument("--plan", required=True, help="code of the plan to move to")
    plan_change.add_argument(
        "--at", type=parse_time, default=None, help="RFC 3339 instant it takes effect (default: now)"
    )
    plan_change.add_argument("--reason", help="recorded with the change")
    plan_change.add_argument("--actor", help="who made the change (default: cli:<OS user name>)")
    plan_change.add_argument("--json", action="store_true", help="print the subscription as JSON")
    plan_change.set_defaults(func=cmd_subscriptions)

    usage = sub.add_parser("usage", help="running totals of the current period, or late usage")
    usage.add_argument("--org", required=True, help="organization id")
    usage.add_argument("--customer", help="only this customer's subscriptions")
    usage.add_argument("--at", type=parse_time, default=None, help="the period containing this time (default: now)")
    usage.add_argument("--late", action="store_true", help="usage that arrived after its period was invoiced")
    usage.add_argument("--json", action="store_true", help="print JSON")
    usage.set_defaults(func=cmd_usage)
