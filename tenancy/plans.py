"""Plans and their limits, stored in ``platform.plans``."""

from __future__ import annotations

import re

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tenancy.models import Plan
from trading.errors import Invalid

_COLUMNS = ", ".join(Plan.__dataclass_fields__)
WORKER_GROUP_RE = re.compile(r"^[a-z][a-z0-9_]{0,30}$")


def validate_worker_group(value: str | None, *, field: str = "worker_group") -> str | None:
    """Return `value` if it is None or matches ``^[a-z][a-z0-9_]{0,30}$``, else raise `Invalid`."""
    if value is None:
        return None
    if not isinstance(value, str) or not WORKER_GROUP_RE.fullmatch(value):
        raise Invalid("worker_group must be 1-31 characters: a lowercase letter, then lowercase "
                      "letters, digits or underscores", field=field)
    return value


async def set_worker_group(conn: AsyncConnection, code: str, group: str | None) -> Plan:
    """Send the plan's tenants to the dedicated Ray worker group `group` (None: the shared pool).

    Applies to actors and jobs created from now on (actors/placement.py); running ones stay.
    """
    validate_worker_group(group)
    await get_plan(conn, code)
    await conn.execute(text("UPDATE platform.plans SET worker_group = :g WHERE code = :c"),
                       {"g": group, "c": code})
    return await get_plan(conn, code)


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
