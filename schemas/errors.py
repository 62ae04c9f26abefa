"""Valora's exception tree: one root, a stable `code` string on every class.

    ValoraError                      code "valora_error"
    ├── InvalidInput (ValueError)    code "invalid_input"
    │   ├── InvalidPlan              code "invalid_plan"
    │   ├── InvalidUsage             code "invalid_usage"
    │   ├── InvalidCatalog           code "invalid_catalog"      (invoicing.catalog_guards)
    │   │   └── BilledHistoryChange  code "billed_history_change" (invoicing.catalog_guards)
    │   ├── AsOfInFuture             code "as_of_in_future"      (invoicing.close_safety)
    │   ├── InvoiceOutOfRange        code "invoice_out_of_range" (invoicing.close_safety)
    │   ├── InvalidCreditAmount      code "invalid_credit_amount" (invoicing.credit_notes)
    │   ├── InvalidParameter         code "invalid_parameter"    (names the field; API inputs)
    │   └── InvalidSetting           code "invalid_setting"      (valora.settings: a VALORA_* variable)
    ├── ResourceNotFound (LookupError) code "not_found"          (API: no such resource in the caller's organization)
    │   ├── OrganizationNotFound     code "organization_not_found" (invoicing.lookup)
    │   └── CustomerNotFound         code "customer_not_found"   (invoicing.lookup)
    ├── Unauthenticated              code "unauthenticated"      (invoicing.operations.keys)
    ├── MissingScope                 code "missing_scope"        (invoicing.operations.keys)
    ├── ApiKeyNotFound (LookupError) code "api_key_not_found"    (invoicing.operations.keys)
    ├── NoCurrentPeriod              code "no_current_period"    (invoicing.operations.usage)
    ├── PayloadTooLarge              code "payload_too_large"    (streams.ingest)
    ├── BrokerUnavailable            code "broker_unavailable"   (streams.ingest)
    ├── DatabaseUnavailable          code "database_unavailable" (invoicing.db)
    ├── SchemaOutOfDate              code "schema_out_of_date"   (invoicing.db)
    ├── IllegalTransition            code "illegal_transition"   (invoicing.lifecycle)
    ├── ConcurrentUpdate             code "concurrent_update"    (invoicing.commands)
    ├── InvoiceHasCreditNotes        code "invoice_has_credit_notes" (invoicing.commands)
    ├── InvoiceNotFound (LookupError) code "invoice_not_found"   (invoicing.commands)
    ├── InvoiceNotCreditable         code "invoice_not_creditable" (invoicing.credit_notes)
    ├── InvoiceNotReissuable         code "invoice_not_reissuable" (invoicing.reissue)
    ├── OverCredit                   code "over_credit"          (invoicing.credit_notes)
    ├── InvoiceLineNotFound (LookupError) code "invoice_line_not_found" (invoicing.credit_notes)
    ├── CreditNoteNotFound (LookupError) code "credit_note_not_found" (invoicing.credit_notes)
    ├── SubscriptionNotFound (LookupError) code "subscription_not_found" (invoicing.subscriptions)
    ├── OffsetsOutOfRange            code "offsets_out_of_range" (streams.offsets)
    └── WorkerCrashed                code "worker_crashed"       (streams.worker)

The subclasses live with the code that raises them (named in brackets above).

Errors about a bad value also subclass `ValueError`, so code that only knows the
standard library can still catch them. The `code` is part of the contract (logs,
CLI exit lines, API error bodies): never rename one, add a new class instead.
Messages are one line and name the offending thing (plan code, charge key, meter).
"""

from __future__ import annotations


class ValoraError(Exception):
    """Root of every error Valora raises on purpose."""

    code: str = "valora_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(ValoraError, ValueError):
    """A value given to Valora (file, payload, argument) is malformed or out of range."""

    code = "invalid_input"


class InvalidPlan(InvalidInput):
    """A plan failed validation; the message names the plan code and the charge key."""

    code = "invalid_plan"


class InvalidUsage(InvalidInput):
    """A usage quantity is not a finite, non-negative number; the message names the meter."""

    code = "invalid_usage"


class InvalidParameter(InvalidInput):
    """One named input (a query parameter, a body field) is invalid; `field` names it for API error bodies."""

    code = "invalid_parameter"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ResourceNotFound(ValoraError, LookupError):
    """No such resource in the caller's organization (another organization's looks exactly the same)."""

    code = "not_found"
