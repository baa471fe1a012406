"""The platform's side of the agent protocol (docs/agent.md): frames, storage, commands.

`parse_frame` validates one incoming text frame into a typed frame or an `AtpError`
naming the field. `AgentStore` keeps everything in the tenant's schema (tenant units of
work): the registry row, events stored exactly once by (agent, seq) with the watermark
moved in the same transaction, the agent's latest positions and P&L folded from its
events, and commands. Commands are routed through Redis: the replica that holds an
agent's socket listens on the agent's command channel, so a command posted to any
replica reaches it; a command stays queued in PostgreSQL until the agent acknowledges it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tenancy.db import Database
from trading.errors import Invalid, NotFound

PROTOCOL_VERSION = 1
MAX_BATCH = 500
MAX_FRAME_BYTES = 1024 * 1024
KINDS = ("order", "fill", "position", "pnl", "log")
COMMANDS = ("start_bot", "stop_bot", "kill_switch")
STALE_AFTER_BEATS = 3


def command_channel(tenant_id: uuid.UUID, agent_id: uuid.UUID) -> str:
    """The Redis channel that wakes the replica holding an agent's socket."""
    return f"atp:agent-commands:{tenant_id}:{agent_id}"


# -- frames ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hello:
    agent_id: uuid.UUID
    name: str
    version: str
    last_ack: int


@dataclass(frozen=True)
class Event:
    seq: int
    kind: str
    at: datetime
    data: dict[str, Any]


@dataclass(frozen=True)
class Events:
    events: tuple[Event, ...]


@dataclass(frozen=True)
class Heartbeat:
    at: datetime | None


@dataclass(frozen=True)
class CommandAck:
    command_id: uuid.UUID
    status: Literal["done", "failed"]
    detail: str | None


Frame = Hello | Events | Heartbeat | CommandAck


def parse_frame(raw: str | bytes) -> Frame:
    """One text frame → a typed frame; `Invalid` naming the field otherwise."""
    if len(raw) > MAX_FRAME_BYTES:
        raise Invalid(f"a frame may be at most {MAX_FRAME_BYTES} bytes", code="batch_too_large",
                      field="frame")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Invalid("the frame is not JSON", code="malformed_frame", field="frame") from None
    if not isinstance(body, dict):
        raise Invalid("a frame is a JSON object", code="malformed_frame", field="frame")
    kind = body.get("type")
    if kind == "hello":
        return Hello(_uuid(body, "agent_id"), _text(body, "name", 100), _text(body, "version", 50),
                     _count(body, "last_ack"))
    if kind == "events":
        return Events(_events(body.get("events")))
    if kind == "heartbeat":
        at = body.get("at")
        return Heartbeat(None if at is None else _time(at, "at"))
    if kind == "command_ack":
        status = body.get("status")
        if status not in ("done", "failed"):
            raise Invalid("status must be done or failed", code="malformed_frame", field="status")
        detail = body.get("detail")
        if detail is not None and (not isinstance(detail, str) or len(detail) > 1000):
            raise Invalid("detail must be a string of at most 1000 characters",
                          code="malformed_frame", field="detail")
        return CommandAck(_uuid(body, "command_id"), status, detail)
    raise Invalid(f"unknown frame type {kind!r}", code="malformed_frame", field="type")


def _events(value: Any) -> tuple[Event, ...]:
    if not isinstance(value, list) or not value:
        raise Invalid("events must be a non-empty list", code="malformed_frame", field="events")
    if len(value) > MAX_BATCH:
        raise Invalid(f"a batch may hold at most {MAX_BATCH} events, not {len(value)}",
                      code="batch_too_large", field="events")
    events: list[Event] = []
    for i, item in enumerate(value):
        where = f"events[{i}]"
        if not isinstance(item, dict):
            raise Invalid("an event is an object", code="malformed_frame", field=where)
        seq = _count(item, "seq", field=f"{where}.seq", minimum=1)
        kind = item.get("kind")
        if kind not in KINDS:
            raise Invalid(f"kind must be one of {', '.join(KINDS)}", code="malformed_frame",
                          field=f"{where}.kind")
        data = item.get("data")
        if not isinstance(data, dict):
            raise Invalid("data must be an object", code="malformed_frame", field=f"{where}.data")
        if events and seq != events[-1].seq + 1:
            raise Invalid("sequence numbers in a batch must increase by 1",
                          code="malformed_frame", field=f"{where}.seq")
        events.append(Event(seq, kind, _time(item.get("at"), f"{where}.at"), data))
    return tuple(events)


def _uuid(body: dict[str, Any], key: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(body[key]))
    except (KeyError, ValueError):
        raise Invalid(f"{key} must be a UUID", code="malformed_frame", field=key) from None


def _text(body: dict[str, Any], key: str, limit: int) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not 1 <= len(value.strip()) <= limit:
        raise Invalid(f"{key} must be a string of 1 to {limit} characters",
                      code="malformed_frame", field=key)
    return value.strip()


def _count(body: dict[str, Any], key: str, *, field: str | None = None, minimum: int = 0) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise Invalid(f"{key} must be an integer ≥ {minimum}", code="malformed_frame",
                      field=field or key)
    return value


def _time(value: Any, field: str) -> datetime:
    try:
        at = datetime.fromisoformat(str(value))
    except ValueError:
        raise Invalid("must be an ISO-8601 time", code="malformed_frame", field=field) from None
    if at.tzinfo is None:
        raise Invalid("must carry a UTC offset", code="malformed_frame", field=field)
    return at


# -- storage ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stored:
    watermark: int
    inserted: list[Event]
    resend_from: int | None  # set when the batch started after a gap (nothing stored)


class AgentStore:
    """One tenant's agents, in its schema (every call is one tenant unit of work)."""

    def __init__(self, db: Database, tenant_id: uuid.UUID, slug: str) -> None:
        self._db, self._tenant_id, self._slug = db, tenant_id, slug

    def _uow(self) -> Any:
        return self._db.tenant(self._tenant_id, self._slug)

    async def hello(self, hello: Hello, heartbeat_seconds: float) -> tuple[int, datetime]:
        """Register (or update) the agent as connected; return its watermark and the
        connection's start (which `disconnected` must match: a newer socket wins)."""
        async with self._uow() as uow:
            row = (await uow.conn.execute(text(
                "INSERT INTO agents (id, name, version, connected, connected_at, last_seen_at,"
                " heartbeat_seconds) VALUES (:id, :n, :v, true, now(), now(), :hb)"
                " ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name,"
                " version = EXCLUDED.version, connected = true, connected_at = now(),"
                " last_seen_at = now(), heartbeat_seconds = EXCLUDED.heartbeat_seconds"
                " RETURNING watermark, connected_at"),
                {"id": hello.agent_id, "n": hello.name, "v": hello.version,
                 "hb": heartbeat_seconds})).one()
            await uow.commit()
        return int(row.watermark), row.connected_at

    async def seen(self, agent_id: uuid.UUID) -> None:
        async with self._uow() as uow:
            await uow.conn.execute(text(
                "UPDATE agents SET last_seen_at = now() WHERE id = :id"), {"id": agent_id})
            await uow.commit()

    async def disconnected(self, agent_id: uuid.UUID, connected_at: datetime) -> None:
        """Mark the agent offline, unless a newer socket of it connected meanwhile."""
        async with self._uow() as uow:
            await uow.conn.execute(text(
                "UPDATE agents SET connected = false, disconnected_at = now()"
                " WHERE id = :id AND connected_at = :c"), {"id": agent_id, "c": connected_at})
            await uow.commit()

    async def store(self, agent_id: uuid.UUID, events: tuple[Event, ...]) -> Stored:
        """Store a batch exactly once, in order (see docs/agent.md), in one transaction."""
        async with self._uow() as uow:
            conn = uow.conn
            watermark = int((await conn.execute(text(
                "SELECT watermark FROM agents WHERE id = :id FOR UPDATE"),
                {"id": agent_id})).scalar_one())
            new = [e for e in events if e.seq > watermark]
            if not new:
                return Stored(watermark, [], None)
            if new[0].seq != watermark + 1:
                return Stored(watermark, [], watermark + 1)
            await conn.execute(text(
                "INSERT INTO agent_events (agent_id, seq, kind, at, data)"
                " SELECT :a, * FROM unnest(CAST(:s AS bigint[]), CAST(:k AS text[]),"
                " CAST(:at AS timestamptz[]), CAST(:d AS jsonb[]))"),
                {"a": agent_id, "s": [e.seq for e in new], "k": [e.kind for e in new],
                 "at": [e.at for e in new], "d": [json.dumps(e.data) for e in new]})
            await _fold(conn, agent_id, new)
            watermark = new[-1].seq
            await conn.execute(text(
                "UPDATE agents SET watermark = :w, last_seen_at = now() WHERE id = :id"),
                {"w": watermark, "id": agent_id})
            await uow.commit()
        return Stored(watermark, new, None)

    # -- commands ------------------------------------------------------------------------

    async def add_command(self, agent_id: uuid.UUID, command: str, args: dict[str, Any],
                          actor: str) -> dict[str, Any]:
        async with self._uow() as uow:
            await self._agent_row(uow.conn, agent_id)
            row = (await uow.conn.execute(text(
                "INSERT INTO agent_commands (id, agent_id, command, args, status, created_by)"
                " VALUES (:id, :a, :c, CAST(:args AS jsonb), 'queued', :by)"
                f" RETURNING {_COMMAND_COLUMNS}"),
                {"id": uuid.uuid4(), "a": agent_id, "c": command, "args": json.dumps(args),
                 "by": actor})).one()
            await uow.commit()
        return dict(row._mapping)

    async def open_commands(self, agent_id: uuid.UUID) -> list[dict[str, Any]]:
        """Commands not acknowledged yet, oldest first (delivered ones are sent again)."""
        async with self._uow() as uow:
            rows = await uow.conn.execute(text(
                f"SELECT {_COMMAND_COLUMNS} FROM agent_commands WHERE agent_id = :a"
                " AND status IN ('queued', 'delivered') ORDER BY created_at, id"),
                {"a": agent_id})
            return [dict(r._mapping) for r in rows]

    async def delivered(self, command_ids: list[uuid.UUID]) -> None:
        async with self._uow() as uow:
            await uow.conn.execute(text(
                "UPDATE agent_commands SET status = 'delivered', delivered_at = now()"
                " WHERE id = ANY(:ids) AND status = 'queued'"), {"ids": command_ids})
            await uow.commit()

    async def acknowledge(self, agent_id: uuid.UUID, ack: CommandAck) -> bool:
        """Record an agent's answer; False when it names no open command of this agent."""
        async with self._uow() as uow:
            row = (await uow.conn.execute(text(
                "UPDATE agent_commands SET status = :s, detail = :d, acked_at = now()"
                " WHERE id = :id AND agent_id = :a AND status IN ('queued', 'delivered')"
                " RETURNING id"),
                {"s": ack.status, "d": ack.detail, "id": ack.command_id, "a": agent_id})).first()
            await uow.commit()
        return row is not None

    # -- reads -----------------------------------------------------------------------------

    async def list_agents(self) -> list[dict[str, Any]]:
        async with self._uow() as uow:
            rows = await uow.conn.execute(text(f"SELECT {_AGENT_COLUMNS} FROM agents ORDER BY name, id"))
            return [agent_view(dict(r._mapping)) for r in rows]

    async def get_agent(self, agent_id: str) -> dict[str, Any]:
        async with self._uow() as uow:
            return agent_view(await self._agent_row(uow.conn, agent_id))

    async def _agent_row(self, conn: AsyncConnection, agent_id: uuid.UUID | str
                         ) -> dict[str, Any]:
        try:
            aid = uuid.UUID(str(agent_id))
        except ValueError:
            raise NotFound(f"no agent {agent_id}", field="agent_id") from None
        row = (await conn.execute(text(f"SELECT {_AGENT_COLUMNS} FROM agents WHERE id = :id"),
                                  {"id": aid})).first()
        if row is None:
            raise NotFound(f"no agent {agent_id}", field="agent_id")
        return dict(row._mapping)

    async def events(self, agent_id: str, *, after: int, limit: int) -> list[dict[str, Any]]:
        async with self._uow() as uow:
            agent = await self._agent_row(uow.conn, agent_id)
            rows = await uow.conn.execute(text(
                "SELECT seq, kind, at, data, received_at FROM agent_events WHERE agent_id = :a"
                " AND seq > :after ORDER BY seq LIMIT :limit"),
                {"a": agent["id"], "after": after, "limit": limit})
            return [dict(r._mapping) for r in rows]

    async def commands(self, agent_id: str) -> list[dict[str, Any]]:
        async with self._uow() as uow:
            agent = await self._agent_row(uow.conn, agent_id)
            rows = await uow.conn.execute(text(
                f"SELECT {_COMMAND_COLUMNS} FROM agent_commands WHERE agent_id = :a"
                " ORDER BY created_at DESC, id LIMIT 200"), {"a": agent["id"]})
            return [dict(r._mapping) for r in rows]


_AGENT_COLUMNS = ("id, name, version, connected, connected_at, disconnected_at, last_seen_at,"
                  " heartbeat_seconds, watermark, created_at")
_COMMAND_COLUMNS = ("id, agent_id, command, args, status, detail, created_by, created_at,"
                    " delivered_at, acked_at")


def agent_view(row: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """A registry row with its status: online, stale (no heartbeat for 3 beats) or offline."""
    now = now or datetime.now(UTC)
    beats = timedelta(seconds=float(row["heartbeat_seconds"]) * STALE_AFTER_BEATS)
    if not row["connected"]:
        status = "offline"
    elif now - row["last_seen_at"] > beats:
        status = "stale"
    else:
        status = "online"
    return {**row, "status": status}


async def _fold(conn: AsyncConnection, agent_id: uuid.UUID, events: list[Event]) -> None:
    """Keep the latest position per (account, symbol) and P&L per account from the events."""
    positions: dict[tuple[str, str], tuple[Event, dict[str, Decimal]]] = {}
    pnl: dict[str, tuple[Event, dict[str, Decimal]]] = {}
    for event in events:
        try:
            if event.kind == "position":
                values = _decimals(event.data, ("quantity", "average_cost", "realized_pnl"))
                key = (str(event.data["account"]), str(event.data["symbol"]))
                positions[key] = (event, values)
            elif event.kind == "pnl":
                values = _decimals(event.data, ("cash", "equity", "realized_pnl",
                                                "unrealized_pnl", "fees"))
                pnl[str(event.data["account"])] = (event, values)
        except (KeyError, InvalidOperation, TypeError, ValueError):
            continue  # stored as sent; only well-formed books are folded
    for (account, symbol), (event, v) in positions.items():
        await conn.execute(text(
            "INSERT INTO agent_positions (agent_id, account, symbol, quantity, average_cost,"
            " realized_pnl, seq, updated_at) VALUES (:a, :acc, :sym, :q, :c, :r, :seq, :at)"
            " ON CONFLICT (agent_id, account, symbol) DO UPDATE SET quantity = EXCLUDED.quantity,"
            " average_cost = EXCLUDED.average_cost, realized_pnl = EXCLUDED.realized_pnl,"
            " seq = EXCLUDED.seq, updated_at = EXCLUDED.updated_at"
            " WHERE agent_positions.seq < EXCLUDED.seq"),
            {"a": agent_id, "acc": account, "sym": symbol, "q": v["quantity"],
             "c": v["average_cost"], "r": v["realized_pnl"], "seq": event.seq, "at": event.at})
    for account, (event, v) in pnl.items():
        await conn.execute(text(
            "INSERT INTO agent_pnl (agent_id, account, at, cash, equity, realized_pnl,"
            " unrealized_pnl, fees, seq) VALUES (:a, :acc, :at, :cash, :eq, :r, :u, :f, :seq)"
            " ON CONFLICT (agent_id, account) DO UPDATE SET at = EXCLUDED.at,"
            " cash = EXCLUDED.cash, equity = EXCLUDED.equity,"
            " realized_pnl = EXCLUDED.realized_pnl, unrealized_pnl = EXCLUDED.unrealized_pnl,"
            " fees = EXCLUDED.fees, seq = EXCLUDED.seq WHERE agent_pnl.seq < EXCLUDED.seq"),
            {"a": agent_id, "acc": account, "at": event.at, "cash": v["cash"], "eq": v["equity"],
             "r": v["realized_pnl"], "u": v["unrealized_pnl"], "f": v["fees"],
             "seq": event.seq})


def _decimals(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Decimal]:
    values = {k: Decimal(str(data[k])) for k in keys}
    if not all(v.is_finite() for v in values.values()):
        raise ValueError("not finite")
    return values
