"""API keys: create (secret shown once), list, revoke, and authenticate a presented secret.

A secret reads `vk_<id>_<random>`: `id` (16 hex digits) is public and finds the row; the
random part is 32 bytes from `secrets` (256 bits). Only SHA-256 of the whole secret is
stored, and the presented secret's hash is compared with `hmac.compare_digest`, so neither
the table nor the timing of a comparison gives the secret away. A slow password hash would
add nothing for a 256-bit random secret and cost every request.

Every lookup reads the row, so a revoked or expired key fails on the very next request.

Errors:

    ValoraError
    ├── InvalidInput (ValueError)            code "invalid_input"   (unknown scope, unknown organization, …)
    ├── Unauthenticated                      code "unauthenticated"  (no key, malformed, unknown, revoked, expired)
    ├── MissingScope                         code "missing_scope"    (a valid key without the route's scope)
    └── ApiKeyNotFound (LookupError)         code "api_key_not_found"
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, ForeignKeyConstraint, LargeBinary, Text, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, Session, mapped_column

from invoicing import models as m
from schemas.api import ApiKey, CreatedApiKey, Scope
from schemas.errors import InvalidInput, ValoraError

PREFIX = "vk_"
_SECRET = re.compile(r"^vk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
MAX_NAME = 200


class Unauthenticated(ValoraError):
    """No valid API key: missing, malformed, unknown, revoked or expired (deliberately not said which)."""

    code = "unauthenticated"


class MissingScope(ValoraError):
    """The key is valid but lacks the scope the operation needs."""

    code = "missing_scope"


class ApiKeyNotFound(ValoraError, LookupError):
    code = "api_key_not_found"


class ApiKeyRow(m.Base):
    """Table `api_keys` (migration 0006)."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    organization_id: Mapped[str] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(Text)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    secret_sha256: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column()
    expires_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()
    __table_args__ = (ForeignKeyConstraint(["organization_id"], ["organizations.id"]),)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the organization comes from the key and from nowhere else."""

    key_id: str
    organization: str
    scopes: frozenset[Scope]

    def require(self, scope: Scope) -> None:
        """Raises MissingScope unless the key carries `scope`."""
        if scope not in self.scopes:
            raise MissingScope(f"this API key lacks the scope {scope.value!r}")


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def parse_scopes(raw: list[str]) -> list[Scope]:
    """Scopes in a stable order, each once. Raises InvalidInput naming an unknown one."""
    out: set[Scope] = set()
    for value in raw:
        try:
            out.add(Scope(value))
        except ValueError:
            known = ", ".join(s.value for s in Scope)
            raise InvalidInput(f"unknown scope {value!r} (known: {known})") from None
    if not out:
        raise InvalidInput("a key needs at least one scope")
    return sorted(out, key=lambda s: list(Scope).index(s))


def _read(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        id=row.id,
        organization=row.organization_id,
        name=row.name,
        scopes=[Scope(s) for s in row.scopes],
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


def create_key(
    engine: Engine,
    organization: str,
    scopes: list[str],
    *,
    now: datetime,
    name: str | None = None,
    expires_at: datetime | None = None,
) -> CreatedApiKey:
    """Make a key for `organization`; the returned `secret` is the only copy there will ever be.

    Raises:
        InvalidInput: unknown organization or scope, a name too long, an expiry not after `now`.
    """
    wanted = parse_scopes(scopes)
    if name is not None and len(name) > MAX_NAME:
        raise InvalidInput(f"a key name has at most {MAX_NAME} characters")
    if expires_at is not None and expires_at <= now:
        raise InvalidInput("--expires-at must be in the future")
    key_id = secrets.token_hex(8)
    secret = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    with Session(engine) as session, session.begin():
        if session.get(m.Organization, organization) is None:
            raise InvalidInput(f"unknown organization {organization!r}")
        row = ApiKeyRow(
            id=key_id,
            organization_id=organization,
            name=name,
            scopes=[s.value for s in wanted],
            secret_sha256=_digest(secret),
            created_at=now.astimezone(UTC),
            expires_at=expires_at,
            revoked_at=None,
        )
        session.add(row)
        session.flush()
        return CreatedApiKey(**_read(row).model_dump(), secret=secret)


def list_keys(engine: Engine, organization: str) -> list[ApiKey]:
    """The organization's keys, oldest first, without secrets."""
    with Session(engine) as session:
        rows = session.scalars(
            select(ApiKeyRow)
            .where(ApiKeyRow.organization_id == organization)
            .order_by(ApiKeyRow.created_at, ApiKeyRow.id)
        )
        return [_read(r) for r in rows]


def revoke_key(engine: Engine, key_id: str, *, now: datetime) -> ApiKey:
    """Revoke a key from `now` on (revoking twice keeps the first time). Raises ApiKeyNotFound."""
    with Session(engine) as session, session.begin():
        session.execute(
            update(ApiKeyRow).where(ApiKeyRow.id == key_id, ApiKeyRow.revoked_at.is_(None)).values(revoked_at=now)
        )
        row = session.get(ApiKeyRow, key_id, populate_existing=True)
        if row is None:
            raise ApiKeyNotFound(f"no API key with id {key_id!r}")
        return _read(row)


def authenticate(engine: Engine, secret: str | None, *, now: datetime) -> Principal:
    """The caller behind a presented secret.

    Raises:
        Unauthenticated: no secret, a malformed one, or no live key with that secret.
    """
    match = _SECRET.match(secret or "")
    if match is None:
        raise Unauthenticated("missing or malformed API key: send 'Authorization: Bearer vk_…'")
    # Autocommit: one statement, so no BEGIN/ROLLBACK round trips around it on every request.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        row = conn.execute(
            select(
                ApiKeyRow.organization_id,
                ApiKeyRow.scopes,
                ApiKeyRow.secret_sha256,
                ApiKeyRow.expires_at,
                ApiKeyRow.revoked_at,
            ).where(ApiKeyRow.id == match[1])
        ).one_or_none()
    presented = _digest(match[0])
    # Compare against a dummy digest when the id is unknown, so both paths do the same work.
    stored = row.secret_sha256 if row is not None else b"\0" * 32
    if not hmac.compare_digest(presented, stored) or row is None:
        raise Unauthenticated("invalid API key")
    if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        raise Unauthenticated("invalid API key: revoked or expired")
    return Principal(match[1], row.organization_id, frozenset(Scope(s) for s in row.scopes))
