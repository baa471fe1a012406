"""The JSON payloads of the agent's events, shaped like the platform's.

Amounts are strings (exact decimals), times ISO-8601 with an offset, and every payload
names its `account`, ``agent:<bot name>``.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from trading.orders import Fill, Order
from trading.portfolio import PnlSnapshot, Position


def account_of(bot: str) -> str:
    """Return the account a local bot trades in."""
    return f"agent:{bot}"


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def order_view(order: Order, account: str, bot: str) -> dict[str, Any]:
    """Return an `order` event's data: the order as it stands after a change."""
    return {
        "client_order_id": order.client_order_id, "account": account, "bot": bot,
        "symbol": order.symbol, "side": order.side.value, "type": order.type.value,
        "quantity": str(order.quantity), "status": order.status.value,
        "filled_quantity": str(order.filled_quantity),
        "average_fill_price": _text(order.average_fill_price),
        "limit_price": _text(order.limit_price), "stop_price": _text(order.stop_price),
        "time_in_force": order.time_in_force.value, "fees": str(order.fees),
        "reason": order.reason, "created_at": order.created_at.isoformat(),
    }


def fill_view(fill: Fill, account: str) -> dict[str, Any]:
    """Return a `fill` event's data."""
    return {"fill_id": fill.fill_id, "client_order_id": fill.client_order_id, "account": account,
            "symbol": fill.symbol, "side": fill.side.value, "quantity": str(fill.quantity),
            "price": str(fill.price), "fee": str(fill.fee), "ts": fill.ts.isoformat()}


def position_view(position: Position, account: str, ts: datetime) -> dict[str, Any]:
    """Return a `position` event's data: the position after a fill."""
    return {"account": account, "symbol": position.symbol, "quantity": str(position.quantity),
            "average_cost": str(position.average_cost), "realized_pnl": str(position.realized_pnl),
            "ts": ts.isoformat()}


def pnl_view(snapshot: PnlSnapshot, account: str) -> dict[str, Any]:
    """Return a `pnl` event's data: the bot's money after a bar."""
    return {"account": account, "cash": str(snapshot.cash), "equity": str(snapshot.equity),
            "realized_pnl": str(snapshot.realized_pnl), "unrealized_pnl": str(snapshot.unrealized_pnl),
            "fees": str(snapshot.fees), "ts": snapshot.ts.isoformat()}


def log_view(message: str, *, account: str | None = None, level: str = "info",
             ts: datetime | None = None) -> dict[str, Any]:
    """Return a `log` event's data (the message cut to 1000 characters)."""
    view: dict[str, Any] = {"level": level, "message": message[:1000]}
    if account is not None:
        view["account"] = account
    if ts is not None:
        view["ts"] = ts.isoformat()
    return view
