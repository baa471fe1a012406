"""Request and response bodies of the trading routes: bots, strategies, orders, fills, risk.

Request bodies only fix the shape (unknown fields are refused, as for every `Request`);
the values are validated by the domain (`actors.bots.BotSpec`, `trading.risk.RiskLimits`)
so that each rule, and the field it names, lives in one place. Decimals are strings in
JSON responses.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, WithJsonSchema, field_serializer

from actors.bots import DEFAULT_MEMORY_MB, DEFAULT_NUM_CPUS, Bot
from serve.schemas import Request

# Values checked by the domain, documented with the JSON they take.
Number = Annotated[Any, WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string"}]})]
Symbols = Annotated[Any, WithJsonSchema({"type": "array", "items": {"type": "string"},
                                         "minItems": 1, "maxItems": 50})]


# --- bots -----------------------------------------------------------------------------------

class BotResources(Request):
    num_cpus: Number = Field(default=DEFAULT_NUM_CPUS, description="CPUs reserved, in (0, 16]")
    memory_mb: Number = Field(default=DEFAULT_MEMORY_MB, description="memory reserved, 64-65536 MiB")
    num_gpus: Number = Field(default=0, description="GPUs reserved, 0-8 (the plan must allow them)")


class BotCreate(Request):
    name: str = Field(description="1-100 characters, unique in the tenant")
    strategy: str = Field(description="a strategy name from GET /v1/strategies")
    symbols: Symbols = Field(description="1-50 distinct symbols")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="strategy parameters; defaults fill the rest")
    capital: Number = Field(description="starting cash of the bot's paper account, > 0")
    resources: BotResources | None = None
    package: str | None = Field(default=None, description="an uploaded strategy package: the bot "
                                "runs that code as a Ray job (strategy: one of its strategies)")


class BotPatch(Request):
    """Only the fields given change; `params` and `resources` merge over the stored ones."""

    name: str | None = None
    symbols: Symbols = None
    params: dict[str, Any] | None = None
    capital: Number = None
    resources: BotResources | None = None
    version: int | None = Field(default=None, description="expected version (optional)")


class BotResourcesOut(BaseModel):
    num_cpus: float
    memory_mb: int
    num_gpus: float = 0


class BotOut(BaseModel):
    id: uuid.UUID
    name: str
    strategy: str
    symbols: list[str]
    params: dict[str, Any]
    capital: Decimal
    resources: BotResourcesOut
    account: str = Field(description="the bot's paper account")
    status: str = Field(description="stopped, starting, running, stopping or error")
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    version: int
    package: str | None = Field(default=None, description="the strategy package it runs, if any")

    @field_serializer("capital")
    def _fixed_point(self, value: Decimal) -> str:
        return format(value, "f")  # "100000", never "1.0E+5"

    @classmethod
    def of(cls, bot: Bot) -> BotOut:
        return cls(id=bot.id, name=bot.name, strategy=bot.strategy, symbols=list(bot.symbols),
                   params=dict(bot.params), capital=bot.capital,
                   resources=BotResourcesOut(num_cpus=bot.num_cpus, memory_mb=bot.memory_mb,
                                             num_gpus=bot.num_gpus),
                   account=bot.account, status=bot.status,
                   last_error=bot.last_error, created_at=bot.created_at,
                   updated_at=bot.updated_at, version=bot.version, package=bot.package)


class StrategyParamOut(BaseModel):
    type: Literal["int", "float", "decimal", "bool", "str"]
    default: Any
    min: Any = None
    max: Any = None
    min_exclusive: bool = False
    choices: list[Any] | None = None
    description: str = ""


class StrategyOut(BaseModel):
    name: str
    description: str
    params: dict[str, StrategyParamOut]


# --- orders, fills, positions, P&L ----------------------------------------------------------

OrderStatusName = Literal["new", "accepted", "partially_filled", "filled", "canceled", "rejected",
                          "expired"]


class OrderOut(BaseModel):
    id: uuid.UUID
    client_order_id: str
    account: str
    bot_id: uuid.UUID | None
    symbol: str
    side: Literal["buy", "sell"]
    type: Literal["market", "limit", "stop", "stop_limit"]
    quantity: Decimal
    limit_price: Decimal | None
    stop_price: Decimal | None
    time_in_force: Literal["gtc", "ioc", "day"]
    status: OrderStatusName
    filled_quantity: Decimal
    average_fill_price: Decimal | None
    fees: Decimal
    triggered: bool
    reason: str | None
    source: Literal["bot", "manual", "agent"]
    created_at: datetime
    updated_at: datetime
    version: int


class OrderEventOut(BaseModel):
    from_status: OrderStatusName | None
    to_status: OrderStatusName
    reason: str | None
    at: datetime


class OrderDetailOut(OrderOut):
    events: list[OrderEventOut] = Field(description="every status change, oldest first")


class FillOut(BaseModel):
    fill_id: str
    order_id: uuid.UUID
    client_order_id: str
    account: str
    symbol: str
    side: Literal["buy", "sell"]
    quantity: Decimal
    price: Decimal
    fee: Decimal
    at: datetime


class PositionOut(BaseModel):
    account: str
    symbol: str
    quantity: Decimal = Field(description="signed: negative when short")
    average_cost: Decimal
    realized_pnl: Decimal
    updated_at: datetime
    source: Literal["platform", "agent"] = Field(
        default="platform", description="the platform's own books, or a local agent's report")
    agent_id: uuid.UUID | None = Field(default=None, description="the reporting agent")


class PnlSnapshotOut(BaseModel):
    at: datetime
    cash: Decimal
    equity: Decimal
    realized_pnl: Decimal
    unrealized_pnl: Decimal
    fees: Decimal
    gross_exposure: Decimal | None = Field(description="null for an agent's report")
    net_exposure: Decimal | None


class AccountPnlOut(BaseModel):
    account: str
    cash: Decimal
    fees: Decimal
    updated_at: datetime
    snapshot: PnlSnapshotOut | None = Field(description="the latest P&L snapshot, if any")
    source: Literal["platform", "agent"] = "platform"
    agent_id: uuid.UUID | None = None


# --- risk -----------------------------------------------------------------------------------

class RiskOut(BaseModel):
    limits: dict[str, str | int | None] = Field(description="every limit; null means none")
    state: Literal["active", "halted", "reducing"]
    updated_at: datetime
    version: int


class RiskPut(Request):
    limits: dict[str, Any] = Field(description="the complete limits; absent or null means none")
    version: int | None = Field(default=None, description="expected version (optional)")


class RiskStatePut(Request):
    state: Literal["active", "halted", "reducing"] = Field(
        description="active: trade; halted: no new orders; reducing: only orders that reduce "
                    "a position")
    reason: str = Field(min_length=1, max_length=500, description="why (kept in the audit trail)")
