"""The catalog-as-code contract: organizations, meters, plans, customers, subscriptions.

`valora catalog apply FILE` reads this shape; other tools generate it, so it is a
contract: frozen models, unknown fields rejected, every decimal parsed exactly.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from schemas.plans import CURRENCY_EXPONENTS, Plan

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
Ident = Annotated[str, Field(pattern=_ID)]


EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(2200, 1, 1, tzinfo=UTC)
"""Catalog instants lie in [EARLIEST_TIME, LATEST_TIME): every period grid built on them stays a real date."""


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must carry a timezone (e.g. 2026-01-01T00:00:00Z)")
    if not EARLIEST_TIME <= value < LATEST_TIME:
        raise ValueError(f"{value.isoformat()} is outside the supported range 1970-01-01 to 2200-01-01")
    return value


def _iso_4217(code: str) -> str:
    if code not in CURRENCY_EXPONENTS:
        raise ValueError(f"unknown currency {code!r} (want an ISO 4217 code like USD)")
    return code


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]

_DURATION = re.compile(r"^([0-9]+)([smhd]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DRAFT_GRACE_S = 365 * 86400


def _duration_s(value: Any) -> Any:
    """Seconds from a duration: an integer of seconds, or a string like "3600", "90s", "15m", "1h", "2d"."""
    seconds: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and (match := _DURATION.match(value)) is not None:
        seconds = int(match[1]) * _UNIT_S[match[2]]
    if seconds is None or not 0 <= seconds <= MAX_DRAFT_GRACE_S:
        raise ValueError(
            f"must be a duration from 0 to 365 days: seconds, or like '90s', '15m', '1h', '2d' (got {value!r})"
        )
    return seconds


DurationSeconds = Annotated[
    int,
    BeforeValidator(_duration_s),
    Field(ge=0, le=MAX_DRAFT_GRACE_S),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": MAX_DRAFT_GRACE_S},
                {"type": "string", "pattern": _DURATION.pattern},
            ]
        }
    ),
]


class Aggregation(StrEnum):
    """How a meter folds the events it matches into one quantity per period."""

    COUNT = "count"
    SUM = "sum"
    MAX = "max"
    UNIQUE_COUNT = "unique_count"
    LATEST = "latest"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Organization(_Frozen):
    """A tenant: its currency, payment terms and invoice numbering.

    `draft_grace` (default 0) is how long the close's invoices stay drafts before they are
    issued: an integer of seconds, or a string of digits with an optional unit `s`, `m`, `h`
    or `d` ("3600", "90s", "15m", "1h", "2d"), at most 365 days; kept as seconds. With 0 the
    close issues and numbers each invoice at once. Otherwise it writes an unnumbered draft,
    which can be reviewed, issued early or voided by hand, and which the scheduler's
    `issue_drafts` job issues once the grace has passed. Changing the grace does not move
    drafts already written.
    """

    id: Ident
    name: str
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$"), AfterValidator(_iso_4217)]
    payment_terms_days: int = Field(default=30, ge=0, le=365)
    invoice_prefix: str | None = Field(default=None, pattern=r"^[A-Z0-9]{1,12}$")
    draft_grace: DurationSeconds = Field(
        default=0, description="How long the close's invoices stay drafts: seconds, or e.g. '90s', '15m', '1h', '2d'."
    )


class Meter(_Frozen):
    organization: Ident
    key: Ident
    event_type: str = Field(min_length=1)
    aggregation: Aggregation
    value_property: str | None = Field(default=None, pattern=r"^[^.]+(\.[^.]+)*$")
    filters: dict[str, tuple[Any, ...]] | None = None
    allow_negative: bool = Field(
        default=False, description="Accept negative values; otherwise the worker dead-letters them `negative_value`."
    )

    @model_validator(mode="after")
    def _value_property_when_needed(self) -> Meter:
        if self.aggregation is not Aggregation.COUNT and self.value_property is None:
            raise ValueError(f"aggregation {self.aggregation.value!r} needs value_property")
        return self


class CatalogPlan(Plan):
    """A plan as it appears in a catalog: the rating plan plus its owner."""

    organization: Ident


class Customer(_Frozen):
    organization: Ident
    id: Ident
    name: str


class Subscription(_Frozen):
    """A customer on a plan from `start` (until `end`, if given).

    `trial_end`, when given, starts the subscription in a trial that lasts until then:
    no flat charges before it, and usage only if the plan bills trial usage. Without an
    explicit `billing_anchor` a trial subscription's periods are anchored on `trial_end`
    (otherwise on `start`), so its first paid period starts when the trial ends.
    """

    organization: Ident
    id: Ident
    customer: Ident
    plan: Ident
    start: UtcDatetime
    billing_anchor: UtcDatetime | None = None
    end: UtcDatetime | None = None
    trial_end: UtcDatetime | None = None

    @model_validator(mode="after")
    def _window_in_order(self) -> Subscription:
        if self.end is not None and self.end <= self.start:
            raise ValueError("end must be after start")
        if self.trial_end is not None:
            if self.trial_end <= self.start:
                raise ValueError("trial_end must be after start")
            if self.end is not None and self.trial_end >= self.end:
                raise ValueError("trial_end must be before end")
        return self


class Catalog(_Frozen):
    organizations: tuple[Organization, ...] = ()
    meters: tuple[Meter, ...] = ()
    plans: tuple[CatalogPlan, ...] = ()
    customers: tuple[Customer, ...] = ()
    subscriptions: tuple[Subscription, ...] = ()


SECTION_NAMES = ("organizations", "meters", "plans", "customers", "subscriptions")


def entry_label(section: str, raw: Any) -> str:
    """Name a catalog entry for an error message, from whatever id fields it has."""
    if not isinstance(raw, dict):
        return f"{section} entry"
    for field in ("id", "key", "code"):
        if isinstance(raw.get(field), str):
            org = raw.get("organization")
            prefix = f"{org}/" if isinstance(org, str) else ""
            return f"{section[:-1]} {prefix}{raw[field]!r}"
    return f"{section} entry"
