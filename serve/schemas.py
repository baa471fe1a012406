"""Request and response bodies of the gateway (separate from the tables)."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tenancy.models import ApiKeyInfo, Tenant


class Request(BaseModel):
    """Base of request bodies: unknown fields are refused (a tenant id in a body is an error)."""

    model_config = ConfigDict(extra="forbid")


class TokenRequest(Request):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)
    tenant: str | None = Field(default=None, description="slug, when the user has several")


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (a scheme name, not a secret)
    expires_at: int
    tenant: str
    role: str


class TenantOut(BaseModel):
    id: uuid.UUID
    slug: str
    name: str
    plan: str
    status: str
    created_at: datetime
    updated_at: datetime
    version: int

    @classmethod
    def of(cls, tenant: Tenant) -> TenantOut:
        return cls(**tenant.__dict__)


class TenantSummary(BaseModel):
    id: uuid.UUID
    slug: str
    name: str
    plan: str
    status: str


class MeResponse(BaseModel):
    tenant: TenantSummary
    role: str
    credential: Literal["operator", "api_key", "user"]
    actor: str
    email: str | None = None


class ApiKeyOut(BaseModel):
    id: uuid.UUID
    name: str
    role: str
    prefix: str
    created_by: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, info: ApiKeyInfo) -> ApiKeyOut:
        return cls(**info.__dict__)


class ApiKeyCreate(Request):
    name: str = Field(min_length=1, max_length=100)
    role: Literal["owner", "admin", "trader", "viewer"] = "viewer"


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="the key itself; shown only in this response")


class AuditEntryOut(BaseModel):
    seq: int
    actor: str
    action: str
    target: str | None
    detail: dict[str, object]
    at: datetime
    hash: str


class TenantCreate(Request):
    name: str = Field(min_length=1, max_length=200)
    plan: str = Field(min_length=1, max_length=40)
    email: str = Field(max_length=320)
    slug: str | None = Field(default=None, description="derived from the name when absent")
    password: str | None = Field(default=None, min_length=10, max_length=1024)


class TenantCreated(BaseModel):
    tenant: TenantOut
    owner_email: str
    api_key: str = Field(description="shown only in this response")
    owner_password: str | None = Field(
        default=None, description="generated when none was given; shown only here")


class TenantPatch(Request):
    plan: str | None = Field(default=None, min_length=1, max_length=40)
    status: Literal["active", "suspended"] | None = None
    version: int | None = Field(default=None, description="expected version (optional)")


class PlanOut(BaseModel):
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
