"""Plans and their limits, stored in ``platform.plans``."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tenancy.models import Plan
from trading.errors import Invalid

_COLUMNS = ", ".join(Plan.__dataclass_fields__)


async def list_plans(conn: AsyncConnection) -> list[Plan]:
    rows = await conn.execute(text(f"SELECT {_COLUMNS} FROM platform.plans ORDER BY code"))
    return [Plan.from_row(r) for r in rows]


async def get_plan(conn: AsyncConnection, code: str, *, field: str = "plan") -> Plan:
    """Return a plan, or raise `Invalid` naming `field` when there is no such plan."""
    row = (await conn.execute(text(f"SELECT {_COLUMNS} FROM platform.plans WHERE code = :c"),
                              {"c": code})).first()
    if row is None:
        codes = [p.code for p in await list_plans(conn)]
        raise Invalid(f"unknown plan {code!r}; plans: {', '.join(codes)}", field=field)
    return Plan.from_row(row)
