"""Tables of the master schema ``platform`` (SQLAlchemy Core).

The migrations in ``tenancy/migrations/master`` create them; this module only describes
them for queries. Tenant-schema tables are described by the modules that use them.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

PLATFORM_SCHEMA = "platform"
TENANT_GROUP_ROLE = "atp_tenant"

metadata = MetaData(schema=PLATFORM_SCHEMA)

plans = Table(
    "plans", metadata,
    Column("code", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("price_cents", Integer),            # NULL: custom pricing
    Column("currency", Text, nullable=False),
    Column("max_bots", Integer),               # NULL: unlimited
    Column("api_calls_per_month", BigInteger),  # NULL: unlimited
    Column("storage_bytes", BigInteger),
    Column("cpu", Numeric),
    Column("memory_bytes", BigInteger),
    Column("rate_per_second", Numeric),
    Column("burst", Integer),
    Column("gpu", Numeric),                    # NULL: unlimited
)

tenants = Table(
    "tenants", metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("slug", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("plan", Text, ForeignKey("platform.plans.code"), nullable=False),
    Column("status", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("deleted_at", DateTime(timezone=True)),
    Column("version", Integer, nullable=False),
)

users = Table(
    "users", metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("email", Text, nullable=False),
    Column("password_hash", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

memberships = Table(
    "memberships", metadata,
    Column("user_id", UUID(as_uuid=True), ForeignKey("platform.users.id"), primary_key=True),
    Column("tenant_id", UUID(as_uuid=True), ForeignKey("platform.tenants.id"), primary_key=True),
    Column("role", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

api_keys = Table(
    "api_keys", metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", UUID(as_uuid=True), ForeignKey("platform.tenants.id"), nullable=False),
    Column("name", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("prefix", Text, nullable=False, unique=True),
    Column("key_hash", LargeBinary, nullable=False),
    Column("created_by", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
)

audit_log = Table(
    "audit_log", metadata,
    Column("id", BigInteger, primary_key=True),
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("target", Text),
    Column("detail", JSONB, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("prev_hash", Text, nullable=False),
    Column("hash", Text, nullable=False),
)

api_usage = Table(
    "api_usage", metadata,
    Column("tenant_id", UUID(as_uuid=True), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("calls", BigInteger, nullable=False),
)

usage_batches = Table(
    "usage_batches", metadata,
    Column("batch_id", Text, primary_key=True),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)

tenant_keys = Table(
    "tenant_keys", metadata,
    Column("tenant_id", UUID(as_uuid=True), ForeignKey("platform.tenants.id"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("retired_at", DateTime(timezone=True)),
)
