"""Request and response bodies of the gateway (separate from the tables)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tenancy.models import ApiKeyInfo, Plan, Tenant


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


# Read models of the master schema are already frozen records of exactly what a client
# may see (never hashes or wrapped keys), so they serve as response bodies as they are.
TenantOut = Tenant
ApiKeyOut = ApiKeyInfo
PlanOut = Plan


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


class ApiKeyCreate(Request):
    name: str = Field(min_length=1, max_length=100)
    role: Literal["owner", "admin", "trader", "viewer"] = "viewer"


@dataclass(frozen=True)
class ApiKeyCreated(ApiKeyInfo):
    """A new key's record plus the key itself, shown only in this response."""

    key: str


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
