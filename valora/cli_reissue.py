"""`valora invoices reissue ID`: void an invoice and issue its replacement (invoicing.reissue)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from valora.cli_common import connect_engine, load_settings, now_utc, parse_time


def cmd_invoice_reissue(args: argparse.Namespace) -> int:
    from invoicing.lookup import resolve_invoice_id
    from invoicing.reissue import reissue_invoice
    from valora.cli_billing import _default_actor

    engine = connect_engine(load_settings())
    result = reissue_invoice(
        engine,
        resolve_invoice_id(engine, args.invoice_id, organization=args.org),
        now=args.at or now_utc(),
        actor=args.actor or _default_actor(),
        reason=args.reason,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        old, new = result["voided"], result["invoice"]
        print(f"{old['id']}  {old['number'] or '(draft)'}  void")
        print(f"{new['id']}  {new['number']}  {new['status']}  replaces {old['id']}")
    return 0


def add_reissue_parser(inv_actions: Any) -> None:
    reissue = inv_actions.add_parser(
        "reissue", help="void an issued invoice and issue a new one for the same period and lines, with a new number"
    )
    reissue.add_argument("invoice_id", metavar="NUMBER_OR_ID", help="invoice number or id")
    reissue.add_argument("--org", help="the organization, when several use the same number")
    reissue.add_argument("--reason", required=True, help="recorded in both invoices' status history")
    reissue.add_argument("--actor", help="who made the change (default: cli:<OS user name>)")
    reissue.add_argument("--at", type=parse_time, default=None, help="RFC 3339 time of the change (default: now)")
    reissue.add_argument("--json", action="store_true", help="print both invoices as JSON")
    reissue.set_defaults(func=cmd_invoice_reissue)
