"""Read models of the tenant schema for the API, and the tenant's risk settings row.

Every function takes the connection of a tenant unit of work (`Database.tenant`), so the
tenant's role and search path confine it: none of the SQL names a tenant. Rows come back
as plain dicts, Decimals and datetimes as stored.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.bots import bot_account
from tenancy import audit
from tenancy.identifiers import quote_ident, tenant_schema
from trading.errors import Conflict, Internal, Invalid, NotFound
from trading.risk import RiskLimits, TradingState

_ORDER_COLUMNS = ("id, client_order_id, account, bot_id, symbol, side, type, quantity, limit_price,"
                  " stop_price, time_in_force, status, filled_quantity, average_fill_price, fees,"
                  " triggered, reason, source, created_at, updated_at, version")


def _where(conditions: list[str]) -> str:
    return f" WHERE {' AND '.join(conditions)}" if conditions else ""


def _filters(limit: int, *tests: tuple[str, str, Any]) -> tuple[list[str], dict[str, Any]]:
    """SQL conditions and bound parameters for the (column, operator, value) tests given a
    value; columns and operators are this module's constants, never input."""
    conditions: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    for column, op, value in tests:
        if value is not None:
            key = f"p{len(params)}"
            conditions.append(f"{column} {op} :{key}")
            params[key] = value
    return conditions, params


async def list_orders(conn: AsyncConnection, *, bot_id: uuid.UUID | None = None,
                      symbol: str | None = None, status: str | None = None,
                      since: datetime | None = None, until: datetime | None = None,
                      limit: int = 100) -> list[dict[str, Any]]:
    """Return orders, newest first, filtered by bot, symbol, status and creation time.

    `since` is inclusive and `until` exclusive.
    """
    conditions, params = _filters(limit, ("bot_id", "=", bot_id), ("symbol", "=", symbol),
                                  ("status", "=", status), ("created_at", ">=", since),
                                  ("created_at", "<", until))
    rows = await conn.execute(text(
        f"SELECT {_ORDER_COLUMNS} FROM orders{_where(conditions)}"
        " ORDER BY created_at DESC, client_order_id DESC LIMIT :limit"), params)
    return [dict(r._mapping) for r in rows]


async def open_bot_orders(conn: AsyncConnection, bot_id: uuid.UUID) -> list[dict[str, Any]]:
    """A bot's open orders (new, accepted or partially filled), oldest first."""
    rows = await conn.execute(text(
        f"SELECT {_ORDER_COLUMNS} FROM orders WHERE bot_id = :b"
        " AND status IN ('new', 'accepted', 'partially_filled')"
        " ORDER BY created_at, client_order_id"), {"b": bot_id})
    return [dict(r._mapping) for r in rows]


async def get_order(conn: AsyncConnection, client_order_id: str) -> dict[str, Any]:
    """Return one order with its events (oldest first); an unknown id is `NotFound`."""
    row = (await conn.execute(text(
        f"SELECT {_ORDER_COLUMNS} FROM orders WHERE client_order_id = :c"),
        {"c": client_order_id})).first()
    if row is None:
        raise NotFound(f"no order {client_order_id[:64]!r}", field="client_order_id")
    events = await conn.execute(text(
        "SELECT from_status, to_status, reason, at FROM order_events WHERE order_id = :o"
        " ORDER BY id"), {"o": row.id})
    return {**row._mapping, "events": [dict(e._mapping) for e in events]}


async def list_fills(conn: AsyncConnection, *, bot_id: uuid.UUID | None = None,
                     symbol: str | None = None, since: datetime | None = None,
                     until: datetime | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Return fills, newest first; a bot's fills are those of its paper account ``bot:<id>``."""
    account = None if bot_id is None else bot_account(bot_id)
    conditions, params = _filters(limit, ("f.account", "=", account), ("f.symbol", "=", symbol),
                                  ("f.at", ">=", since), ("f.at", "<", until))
    rows = await conn.execute(text(
        "SELECT f.fill_id, f.order_id, o.client_order_id, f.account, f.symbol, f.side,"
        " f.quantity, f.price, f.fee, f.at FROM fills f JOIN orders o ON o.id = f.order_id"
        f"{_where(conditions)} ORDER BY f.at DESC, f.fill_id DESC LIMIT :limit"), params)
    return [dict(r._mapping) for r in rows]


async def list_positions(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Every non-flat position, by account and symbol: the platform's books and, marked
    ``source: agent``, the latest each local agent reported (account ``agent:…``)."""
    rows = await conn.execute(text(
        "SELECT account, symbol, quantity, average_cost, realized_pnl, updated_at,"
        " 'platform' AS source, NULL::uuid AS agent_id FROM positions WHERE quantity <> 0"
        " UNION ALL SELECT account, symbol, quantity, average_cost, realized_pnl, updated_at,"
        " 'agent', agent_id FROM agent_positions WHERE quantity <> 0"
        " ORDER BY source DESC, account, symbol"))
    return [dict(r._mapping) for r in rows]


async def account_pnl(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Return each account's cash and fees with its latest P&L snapshot (None when it has none)."""
    rows = await conn.execute(text(
        "SELECT a.account, a.cash, a.fees, a.updated_at, s.at AS s_at, s.cash AS s_cash,"
        " s.equity, s.realized_pnl, s.unrealized_pnl, s.fees AS s_fees, s.gross_exposure,"
        " s.net_exposure FROM accounts a LEFT JOIN LATERAL (SELECT * FROM pnl_snapshots p"
        " WHERE p.account = a.account ORDER BY p.at DESC, p.id DESC LIMIT 1) s ON true"
        " ORDER BY a.account"))
    result = []
    for r in rows:
        snapshot = None if r.s_at is None else {
            "at": r.s_at, "cash": r.s_cash, "equity": r.equity, "realized_pnl": r.realized_pnl,
            "unrealized_pnl": r.unrealized_pnl, "fees": r.s_fees,
            "gross_exposure": r.gross_exposure, "net_exposure": r.net_exposure}
        result.append({"account": r.account, "cash": r.cash, "fees": r.fees,
                       "updated_at": r.updated_at, "snapshot": snapshot, "source": "platform"})
    agents = await conn.execute(text(
        "SELECT agent_id, account, at, cash, equity, realized_pnl, unrealized_pnl, fees"
        " FROM agent_pnl ORDER BY account, agent_id"))
    for r in agents:  # an agent's books: the latest P&L it reported per account
        result.append({"account": r.account, "cash": r.cash, "fees": r.fees, "updated_at": r.at,
                       "source": "agent", "agent_id": r.agent_id, "snapshot": {
                           "at": r.at, "cash": r.cash, "equity": r.equity,
                           "realized_pnl": r.realized_pnl, "unrealized_pnl": r.unrealized_pnl,
                           "fees": r.fees, "gross_exposure": None, "net_exposure": None}})
    return result


# --- risk settings --------------------------------------------------------------------------

@dataclass(frozen=True)
class RiskSettings:
    """The tenant's risk limits and trading state (its single ``risk_settings`` row)."""

    limits: RiskLimits
    state: TradingState
    updated_at: datetime
    version: int


def _risk_settings(row: Any) -> RiskSettings:
    raw = row.limits if not isinstance(row.limits, str) else json.loads(row.limits)
    try:
        limits = RiskLimits.from_dict(raw)
        state = TradingState(row.state)
    except (Invalid, ValueError, TypeError):
        raise Internal("the stored risk settings are not valid", code="corrupt_risk_settings") from None
    return RiskSettings(limits, state, row.updated_at, row.version)


async def get_risk(conn: AsyncConnection) -> RiskSettings:
    """Return the tenant's risk settings."""
    row = (await conn.execute(text(
        "SELECT limits, state, updated_at, version FROM risk_settings WHERE id = 1"))).first()
    if row is None:
        raise Internal("the tenant has no risk settings row", code="corrupt_risk_settings")
    return _risk_settings(row)


async def put_risk_limits(conn: AsyncConnection, limits: RiskLimits,
                          expected_version: int | None = None) -> RiskSettings:
    """Replace the limits (the state stays) and bump the version.

    A stale `expected_version` is a `Conflict` (``version_conflict``); the caller commits.
    """
    row = (await conn.execute(text(
        "SELECT version FROM risk_settings WHERE id = 1 FOR UPDATE"))).first()
    if row is None:
        raise Internal("the tenant has no risk settings row", code="corrupt_risk_settings")
    if expected_version is not None and expected_version != row.version:
        raise Conflict(f"the risk settings changed (version {row.version}, expected "
                       f"{expected_version})", code="version_conflict", field="version")
    updated = (await conn.execute(text(
        "UPDATE risk_settings SET limits = CAST(:l AS jsonb), updated_at = now(),"
        " version = version + 1 WHERE id = 1 RETURNING limits, state, updated_at, version"),
        {"l": json.dumps(limits.to_dict())})).one()
    return _risk_settings(updated)


async def save_trading_state(conn: AsyncConnection, tenant_id: uuid.UUID, slug: str,
                             state: TradingState, *, actor: str, reason: str,
                             engine: dict[str, Any] | None = None,
                             action: str = "risk.state") -> RiskSettings:
    """Set the trading state by hand and audit who did it and why, in one transaction.

    Runs on a platform unit of work (the audit trail is outside the tenant schema), so
    the tenant's table is named with its validated, quoted schema. `engine` is the
    running gate's counters; without it the stored ones stay, and the gate re-arms its
    triggers when it next loads a state that differs from theirs. The caller commits.
    """
    table = f"{quote_ident(tenant_schema(slug))}.risk_settings"
    old = (await conn.execute(text(
        f"SELECT state FROM {table} WHERE id = 1 FOR UPDATE"))).first()
    if old is None:
        raise Internal("the tenant has no risk settings row", code="corrupt_risk_settings")
    row = (await conn.execute(text(
        f"UPDATE {table} SET state = :s, engine = COALESCE(CAST(:e AS jsonb), engine),"
        " updated_at = now(), version = version + 1 WHERE id = 1"
        " RETURNING limits, state, updated_at, version"),
        {"s": state.value, "e": None if engine is None else json.dumps(engine)})).one()
    await audit.record(conn, tenant_id, actor=actor, action=action, target=state.value,
                       detail={"from": old.state, "to": state.value, "reason": reason})
    return _risk_settings(row)
