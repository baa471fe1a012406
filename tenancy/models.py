"""Read models of the master schema: plain frozen records handed to callers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class Plan:
    code: str
    name: str
    price_cents: int | None
    currency: str
    max_bots: int | None
    api_calls_per_month: int | None
    storage_bytes: int | None
    cpu: Decimal | None
    memory_bytes: int | None
    rate_per_second: Decimal | None
    burst: int | None
    gpu: Decimal | None = None
    api_call_overage_cents_per_1000: Decimal = Decimal(0)
    cpu_hours_included: Decimal | None = None  # None: unlimited
    cpu_hour_overage_cents: Decimal = Decimal(0)
    storage_gb_month_overage_cents: Decimal = Decimal(0)
    quota_policy: str = "warn"  # what the runtime quota watch does: warn | stop_bots
    worker_group: str | None = None  # a dedicated Ray worker group (actors/placement.py); None: shared

    @classmethod
    def from_row(cls, row: Any) -> Plan:
        return cls(**{f: getattr(row, f) for f in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Tenant:
    id: uuid.UUID
    slug: str
    name: str
    plan: str
    status: str
    created_at: datetime
    updated_at: datetime
    version: int
    billing_status: str = "current"  # current | past_due | suspended (for non-payment)
    past_due_since: datetime | None = None

    @classmethod
    def from_row(cls, row: Any) -> Tenant:
        return cls(**{f: getattr(row, f) for f in cls.__dataclass_fields__})

    @property
    def active(self) -> bool:
        return self.status == "active"


@dataclass(frozen=True)
class ApiKeyInfo:
    id: uuid.UUID
    name: str
    role: str
    prefix: str
    created_by: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> ApiKeyInfo:
        return cls(**{f: getattr(row, f) for f in cls.__dataclass_fields__})
