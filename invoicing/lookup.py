"""Finding what a person names: an organization, a customer, an invoice by its number or id.

Commands take ids; people read numbers off invoices (`ACME-2026-000003`). These lookups
turn what was typed into the id, or into a not-found error that says what does not exist,
so `valora usage --org nope` says "no organization 'nope'" instead of printing nothing.
"""

from __future__ import annotations

from sqlalchemy import Engine, or_, select
from sqlalchemy.orm import Session

from invoicing import models as m
from invoicing.commands import InvoiceNotFound
from schemas.errors import InvalidInput, ResourceNotFound


class OrganizationNotFound(ResourceNotFound):
    """No organization with that id."""

    code = "organization_not_found"


class CustomerNotFound(ResourceNotFound):
    """No customer with that id in the organization."""

    code = "customer_not_found"


def require_organization(engine: Engine, organization: str, customer: str | None = None) -> None:
    """Check that `organization` (and `customer` in it, when given) exist.

    Raises:
        OrganizationNotFound: no such organization.
        CustomerNotFound: the organization has no such customer.
    """
    with Session(engine) as session:
        if session.get(m.Organization, organization) is None:
            raise OrganizationNotFound(f"no organization {organization!r} (see `valora catalog apply`)")
        if customer is not None and session.get(m.Customer, (organization, customer)) is None:
            raise CustomerNotFound(f"organization {organization!r} has no customer {customer!r}")


def resolve_invoice_id(engine: Engine, number_or_id: str, *, organization: str | None = None) -> str:
    """The id of the invoice with this id or number (numbers are unique per organization).

    Raises:
        InvoiceNotFound: no invoice has that id or number (in that organization).
        InvalidInput: invoices of several organizations carry that number: pass the organization.
    """
    with Session(engine) as session:
        query = select(m.Invoice.id, m.Invoice.organization_id).where(
            or_(m.Invoice.id == number_or_id, m.Invoice.number == number_or_id)
        )
        if organization is not None:
            query = query.where(m.Invoice.organization_id == organization)
        found = session.execute(query.order_by(m.Invoice.organization_id)).all()
    if not found:
        owner = f" in organization {organization!r}" if organization else ""
        raise InvoiceNotFound(f"no invoice with number or id {number_or_id!r}{owner}")
    if len(found) > 1:
        orgs = ", ".join(org for _, org in found)
        raise InvalidInput(f"invoice number {number_or_id!r} exists in organizations {orgs}: pass --org")
    return str(found[0].id)
