"""Organization-scoped operations: what the HTTP API (and, in time, the CLI) calls.

Each operation takes the caller's organization and typed inputs, resolves every id inside that
organization first (another organization's resource is not found, exactly like a missing one),
then calls the existing modules of `invoicing` and returns a frozen read model from `schemas.api`.

    keys      API keys: create (secret once), list, revoke, authenticate
    invoices  invoices and credit notes: pages, by id or number, status moves, credit, dead letters
    usage     running totals, the invoice preview, meter queries over stored events
    catalog   meters, plans, customers, subscriptions: pages, by id, PUT (catalog apply), moves
"""
