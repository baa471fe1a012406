"""The audit trail: append-only, hash-chained per tenant.

Entry *n* of a tenant stores ``prev_hash`` (entry *n-1*'s hash, or 64 zeros for the first)
and ``hash = sha256(prev_hash || canonical JSON of the entry)``. Changing, removing or
reordering any entry breaks the chain from that point; `verify` names the first broken
link. Writers serialise per tenant on an advisory lock, so sequence numbers have no gaps.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

GENESIS_HASH = "0" * 64


def _canonical(tenant_id: uuid.UUID, seq: int, actor: str, action: str, target: str | None,
               detail: dict[str, Any], at: datetime) -> str:
    return json.dumps(
        {"tenant_id": str(tenant_id), "seq": seq, "actor": actor, "action": action,
         "target": target, "detail": detail, "at": at.astimezone(UTC).isoformat()},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def entry_hash(prev_hash: str, tenant_id: uuid.UUID, seq: int, actor: str, action: str,
               target: str | None, detail: dict[str, Any], at: datetime) -> str:
    payload = _canonical(tenant_id, seq, actor, action, target, detail, at)
    return hashlib.sha256((prev_hash + payload).encode()).hexdigest()


async def record(conn: AsyncConnection, tenant_id: uuid.UUID, *, actor: str, action: str,
                 target: str | None = None, detail: dict[str, Any] | None = None) -> int:
    """Append one entry to a tenant's trail in the caller's transaction; return its seq."""
    detail = json.loads(json.dumps(detail or {}, default=str))  # what jsonb will give back
    await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                       {"k": f"atp.audit.{tenant_id}"})
    last = (await conn.execute(
        text("SELECT seq, hash FROM platform.audit_log WHERE tenant_id = :t"
             " ORDER BY seq DESC LIMIT 1"), {"t": tenant_id})).first()
    seq, prev = (last.seq + 1, last.hash) if last else (1, GENESIS_HASH)
    at = datetime.now(UTC)
    digest = entry_hash(prev, tenant_id, seq, actor, action, target, detail, at)
    await conn.execute(
        text("INSERT INTO platform.audit_log"
             " (tenant_id, seq, actor, action, target, detail, at, prev_hash, hash)"
             " VALUES (:t, :seq, :actor, :action, :target, CAST(:detail AS jsonb), :at,"
             " :prev, :hash)"),
        {"t": tenant_id, "seq": seq, "actor": actor, "action": action, "target": target,
         "detail": json.dumps(detail), "at": at, "prev": prev, "hash": digest})
    return seq


@dataclass(frozen=True)
class ChainReport:
    """The result of walking one tenant's chain."""

    tenant_id: uuid.UUID
    entries: int
    broken_seq: int | None = None
    broken_id: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.broken_seq is None


async def verify(conn: AsyncConnection, tenant_id: uuid.UUID | None = None) -> list[ChainReport]:
    """Walk the chain of one tenant (or every tenant) and report the first broken link."""
    where, params = ("WHERE tenant_id = :t", {"t": tenant_id}) if tenant_id else ("", {})
    result = await conn.stream(text(
        "SELECT id, tenant_id, seq, actor, action, target, detail, at, prev_hash, hash"
        f" FROM platform.audit_log {where} ORDER BY tenant_id, seq"), params)
    reports: list[ChainReport] = []
    current: uuid.UUID | None = None
    expected_seq, prev, count, broken = 1, GENESIS_HASH, 0, False

    def close() -> None:
        if current is not None and not broken:
            reports.append(ChainReport(current, count))

    async for row in result:
        if row.tenant_id != current:
            close()
            current, expected_seq, prev, count, broken = row.tenant_id, 1, GENESIS_HASH, 0, False
        if broken:
            continue
        count += 1
        reason = None
        if row.seq != expected_seq:
            reason = f"sequence jumps from {expected_seq - 1} to {row.seq} (entries removed)"
        elif row.prev_hash != prev:
            reason = "prev_hash does not match the previous entry's hash"
        elif row.hash != entry_hash(row.prev_hash, row.tenant_id, row.seq, row.actor,
                                    row.action, row.target, row.detail, row.at):
            reason = "the entry's contents do not match its hash (modified)"
        if reason:
            broken = True
            reports.append(ChainReport(row.tenant_id, count, row.seq, row.id, reason))
        expected_seq, prev = row.seq + 1, row.hash
    close()
    if tenant_id is not None and not reports:
        reports.append(ChainReport(tenant_id, 0))
    return reports
