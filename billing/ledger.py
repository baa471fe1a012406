"""The usage ledger: append-only samples in ``platform.usage_events`` and their aggregates.

A sample says how much of one meter one tenant used in one window, as seen by one
source. Its idempotency key is (tenant, meter, window start, source): a sample recorded
twice is counted once. `record` validates a batch, drops what it must refuse into
``platform.usage_rejects`` (and the log) with the reason, inserts the rest, and adds
exactly the rows it inserted to ``platform.usage_daily`` — all in the caller's
transaction, so the aggregates never disagree with the events.

Refused: an unknown meter, a quantity that is negative or not finite, a window that is
empty, naive or ends in the future (beyond a small clock skew), an unknown tenant, and a
window whose month is closed for that tenant (it has an invoice that is not void). A
late sample otherwise lands in its own window, in the day and month of its start.

Closing a month (`billing.invoices`) takes the ledger lock exclusively; `record` takes it
shared, so no sample slips into a month while it is being closed.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from trading.errors import Invalid

log = logging.getLogger(__name__)

# meter → (unit, description)
METERS: dict[str, tuple[str, str]] = {
    "cpu_seconds": ("CPU-s", "CPU time of the tenant's actor and job-driver processes"),
    "memory_gb_seconds": ("GB-s", "resident memory (RSS) integrated over time"),
    "gpu_seconds": ("GPU-s", "GPUs assigned to the tenant's actors times wall time"),
    "gpu_memory_gb_seconds": ("GB-s", "GPU memory in use integrated over time"),
    "api_calls": ("calls", "authenticated API calls through the gateway"),
    "storage_gb_seconds": ("GB-s", "size of the tenant's schema integrated over time"),
}
MAX_SKEW = timedelta(seconds=5)
LEDGER_LOCK = 727_001  # advisory lock: shared by writers, exclusive while closing a month

Granularity = Literal["day", "month"]


@dataclass(frozen=True)
class Sample:
    tenant_id: uuid.UUID
    meter: str
    window_start: datetime
    window_end: datetime
    source: str
    quantity: Decimal

    @property
    def key(self) -> tuple[uuid.UUID, str, datetime, str]:
        return (self.tenant_id, self.meter, self.window_start, self.source)


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[tuple[Sample, str]] = field(default_factory=list)


GB = Decimal(1_000_000_000)  # storage and memory meters count decimal gigabytes


def month_of(ts: datetime | date) -> date:
    return date(ts.year, ts.month, 1)


def month_end(period: date) -> date:
    """The first day of the month after `period`'s."""
    return (period.replace(day=28) + timedelta(days=4)).replace(day=1)


def check(sample: Sample, now: datetime) -> str | None:
    """The reason a sample is refused on its own, or None."""
    if sample.meter not in METERS:
        return "unknown_meter"
    try:
        quantity = Decimal(sample.quantity)
    except (InvalidOperation, TypeError, ValueError):
        return "bad_quantity"
    if not quantity.is_finite():
        return "non_finite_quantity"
    if quantity < 0:
        return "negative_quantity"
    for ts in (sample.window_start, sample.window_end):
        if not isinstance(ts, datetime) or ts.tzinfo is None:
            return "naive_window"
    if sample.window_end <= sample.window_start:
        return "empty_window"
    if sample.window_end > now + MAX_SKEW:
        return "window_in_future"
    if not isinstance(sample.source, str) or not 1 <= len(sample.source) <= 200:
        return "bad_source"
    return None


async def record(conn: AsyncConnection, samples: Iterable[Sample], *,
                 now: datetime | None = None) -> IngestResult:
    """Add samples to the ledger in the caller's transaction (see the module docstring)."""
    now = now or datetime.now(UTC)
    result = IngestResult()
    batch: dict[tuple[uuid.UUID, str, datetime, str], Sample] = {}
    for sample in samples:
        reason = check(sample, now)
        if reason is not None:
            result.rejected.append((sample, reason))
        elif sample.key in batch:
            result.duplicates += 1
        else:
            batch[sample.key] = sample
    await conn.execute(text("SELECT pg_advisory_xact_lock_shared(:k)"), {"k": LEDGER_LOCK})
    if batch:
        tenants = list({s.tenant_id for s in batch.values()})
        known = {r.id for r in await conn.execute(text(
            "SELECT id FROM platform.tenants WHERE id = ANY(:t)"), {"t": tenants})}
        closed = {(r.tenant_id, r.period) for r in await conn.execute(text(
            "SELECT tenant_id, period FROM platform.invoices"
            " WHERE tenant_id = ANY(:t) AND status <> 'void'"), {"t": tenants})}
        for key, sample in list(batch.items()):
            if sample.tenant_id not in known:
                result.rejected.append((sample, "unknown_tenant"))
                del batch[key]
            elif (sample.tenant_id, month_of(sample.window_start.astimezone(UTC))) in closed:
                result.rejected.append((sample, "period_closed"))
                del batch[key]
    if batch:
        inserted = await _insert(conn, list(batch.values()))
        result.accepted = len(inserted)
        result.duplicates += len(batch) - len(inserted)
        await _add_daily(conn, inserted)
    if result.rejected:
        await _reject(conn, result.rejected)
    return result


async def _insert(conn: AsyncConnection, samples: Sequence[Sample]) -> list[Any]:
    rows = await conn.execute(text(
        "INSERT INTO platform.usage_events"
        " (tenant_id, meter, window_start, window_end, source, quantity)"
        " SELECT * FROM unnest(CAST(:t AS uuid[]), CAST(:m AS text[]),"
        " CAST(:ws AS timestamptz[]), CAST(:we AS timestamptz[]), CAST(:s AS text[]),"
        " CAST(:q AS numeric[]))"
        " ON CONFLICT (tenant_id, meter, window_start, source) DO NOTHING"
        " RETURNING tenant_id, meter, window_start, quantity"),
        {"t": [s.tenant_id for s in samples], "m": [s.meter for s in samples],
         "ws": [s.window_start for s in samples], "we": [s.window_end for s in samples],
         "s": [s.source for s in samples], "q": [Decimal(s.quantity) for s in samples]})
    return list(rows)


async def _add_daily(conn: AsyncConnection, rows: Sequence[Any]) -> None:
    if not rows:
        return
    sums: dict[tuple[uuid.UUID, str, date], list[Any]] = defaultdict(lambda: [Decimal(0), 0])
    for r in rows:
        entry = sums[(r.tenant_id, r.meter, r.window_start.astimezone(UTC).date())]
        entry[0] += r.quantity
        entry[1] += 1
    keys = sorted(sums)  # a fixed order: concurrent writers lock rows the same way
    await conn.execute(text(
        "INSERT INTO platform.usage_daily (tenant_id, meter, day, quantity, samples)"
        " SELECT * FROM unnest(CAST(:t AS uuid[]), CAST(:m AS text[]), CAST(:d AS date[]),"
        " CAST(:q AS numeric[]), CAST(:n AS bigint[]))"
        " ON CONFLICT (tenant_id, meter, day) DO UPDATE SET"
        " quantity = platform.usage_daily.quantity + EXCLUDED.quantity,"
        " samples = platform.usage_daily.samples + EXCLUDED.samples"),
        {"t": [k[0] for k in keys], "m": [k[1] for k in keys], "d": [k[2] for k in keys],
         "q": [sums[k][0] for k in keys], "n": [sums[k][1] for k in keys]})


async def _reject(conn: AsyncConnection, rejected: Sequence[tuple[Sample, str]]) -> None:
    for sample, reason in rejected:
        log.warning("usage sample refused (%s): tenant=%s meter=%r window=%s..%s source=%r "
                    "quantity=%r", reason, sample.tenant_id, sample.meter, sample.window_start,
                    sample.window_end, sample.source, sample.quantity)
    await conn.execute(text(
        "INSERT INTO platform.usage_rejects"
        " (tenant_id, meter, window_start, window_end, source, quantity, reason)"
        " VALUES (:t, :m, :ws, :we, :s, :q, :r)"),
        [{"t": s.tenant_id if isinstance(s.tenant_id, uuid.UUID) else None,
          "m": str(s.meter)[:100], "ws": _ts(s.window_start), "we": _ts(s.window_end),
          "s": str(s.source)[:200], "q": str(s.quantity)[:100], "r": reason}
         for s, reason in rejected])


def _ts(value: Any) -> datetime | None:
    return value if isinstance(value, datetime) and value.tzinfo is not None else None


# -- reading ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class UsageRow:
    tenant_id: uuid.UUID
    meter: str
    period: date  # the day, or the first day of the month
    quantity: Decimal
    samples: int


def usage_range(start: date | None, end: date | None, *, today: date | None = None
                ) -> tuple[date, date]:
    """Validate a [start, end) date range; defaults: this month so far."""
    today = today or datetime.now(UTC).date()
    start = start or today.replace(day=1)
    end = end or today + timedelta(days=1)
    if end <= start:
        raise Invalid("'to' must be after 'from'", field="to")
    if (end - start).days > 3660:
        raise Invalid("the range may cover at most ten years", field="to")
    return start, end


async def usage(conn: AsyncConnection, start: date, end: date, granularity: Granularity, *,
                tenant_id: uuid.UUID | None = None) -> list[UsageRow]:
    """Usage per tenant, meter and day or month over [start, end) from the daily aggregate."""
    if granularity not in ("day", "month"):
        raise Invalid("granularity must be day or month", field="granularity")
    bucket = "day" if granularity == "day" else "date_trunc('month', day)::date"
    where = "day >= :start AND day < :end"
    params: dict[str, Any] = {"start": start, "end": end}
    if tenant_id is not None:
        where += " AND tenant_id = :t"
        params["t"] = tenant_id
    rows = await conn.execute(text(
        f"SELECT tenant_id, meter, {bucket} AS period, sum(quantity) AS quantity,"
        f" sum(samples) AS samples FROM platform.usage_daily WHERE {where}"
        " GROUP BY tenant_id, meter, period ORDER BY period, tenant_id, meter"), params)
    return [UsageRow(r.tenant_id, r.meter, r.period, r.quantity, int(r.samples)) for r in rows]


async def month_totals(conn: AsyncConnection, tenant_id: uuid.UUID, period: date
                       ) -> dict[str, Decimal]:
    """A tenant's total per meter over one calendar month."""
    rows = await usage(conn, period, month_end(period), "month", tenant_id=tenant_id)
    return {r.meter: r.quantity for r in rows}


