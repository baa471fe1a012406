"""Local agents: the sync WebSocket (`/v1/agent/ws`), the registry and commands.

The socket speaks docs/agent.md. Any gateway replica can hold any agent's socket:
events go to PostgreSQL (exactly once, `serve.agent_hub.AgentStore`) and then to the
tenant's Redis event channel (so they appear on `/v1/stream`); commands posted to any
replica wake the holder through the agent's Redis command channel, and stay queued in
PostgreSQL until the agent acknowledges them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect, status
from pydantic import Field

from actors.tenant_runtime import events_channel
from serve.agent_hub import (
    MAX_BATCH,
    PROTOCOL_VERSION,
    AgentStore,
    CommandAck,
    Events,
    Heartbeat,
    Hello,
    command_channel,
    parse_frame,
)
from serve.deps import AdminDep, Services, ServicesDep, TraderDep, ViewerDep, tenant_of
from serve.routes.stream import authenticate_socket, run_until_one_ends
from serve.schemas import Request
from tenancy.roles import Role
from trading.errors import AtpError, Invalid

log = logging.getLogger(__name__)
router = APIRouter(tags=["agents"])

HELLO_TIMEOUT_SECONDS = 10.0
DISCONNECT = "disconnect"


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


def _error_frame(exc: AtpError) -> str:
    return _json({"type": "error", "code": exc.code, "message": exc.message, "field": exc.field})


@router.websocket("/v1/agent/ws")
async def agent_socket(ws: WebSocket) -> None:
    services: Services = ws.app.state.services
    principal = await authenticate_socket(ws, Role.TRADER)
    if principal is None:
        return
    await ws.accept()
    tenant = principal.tenant
    assert tenant is not None
    store = AgentStore(services.db, tenant.id, tenant.slug)
    try:
        hello = await _hello(ws)
    except (AtpError, TimeoutError, WebSocketDisconnect) as exc:
        with contextlib.suppress(Exception):
            if isinstance(exc, AtpError):
                await ws.send_text(_error_frame(exc))
            await ws.close(code=4400, reason="hello_required")
        return
    session = _Session(ws, services, store, tenant.id, hello)
    await session.run()


async def _hello(ws: WebSocket) -> Hello:
    raw = await asyncio.wait_for(ws.receive_text(), HELLO_TIMEOUT_SECONDS)
    frame = parse_frame(raw)
    if not isinstance(frame, Hello):
        raise Invalid("the first frame must be hello", code="hello_required", field="type")
    return frame


class _Session:
    """One open agent socket on this replica."""

    def __init__(self, ws: WebSocket, services: Services, store: AgentStore,
                 tenant_id: uuid.UUID, hello: Hello) -> None:
        self.ws, self.services, self.store = ws, services, store
        self.tenant_id, self.agent_id = tenant_id, hello.agent_id
        self.hello = hello
        self.heartbeat = services.settings.agent_heartbeat_seconds
        self.send_lock = asyncio.Lock()
        self.sent_commands: set[uuid.UUID] = set()

    async def send(self, frame: dict[str, Any]) -> None:
        async with self.send_lock:
            await self.ws.send_text(_json(frame))

    async def run(self) -> None:
        watermark, connected_at = await self.store.hello(self.hello, self.heartbeat)
        await self.send({"type": "welcome", "agent_id": str(self.agent_id),
                         "watermark": watermark, "heartbeat_seconds": self.heartbeat,
                         "max_batch": MAX_BATCH, "protocol": PROTOCOL_VERSION})
        pubsub = self.services.redis.pubsub()
        await pubsub.subscribe(command_channel(self.tenant_id, self.agent_id))
        await self.deliver_commands()
        try:
            await run_until_one_ends(pubsub, self.receive(), self.beat(), self.commands(pubsub))
        finally:
            with contextlib.suppress(Exception):
                await self.store.disconnected(self.agent_id, connected_at)

    async def receive(self) -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                raw = await self.ws.receive_text()
                try:
                    await self.handle(parse_frame(raw))
                except AtpError as exc:  # a bad frame: say so, store nothing, stay open
                    await self.send({"type": "error", "code": exc.code, "message": exc.message,
                                     "field": exc.field})

    async def handle(self, frame: Any) -> None:
        if isinstance(frame, Events):
            stored = await self.store.store(self.agent_id, frame.events)
            if stored.resend_from is not None:
                await self.send({"type": "resend", "from": stored.resend_from})
                return
            await self.send({"type": "ack", "upto": stored.watermark})
            if stored.inserted:
                await self.publish(stored.inserted)
        elif isinstance(frame, Heartbeat):
            await self.store.seen(self.agent_id)
        elif isinstance(frame, CommandAck):
            if not await self.store.acknowledge(self.agent_id, frame):
                log.info("agent %s acknowledged an unknown or closed command", self.agent_id)
        else:
            raise Invalid("hello may be sent once, first", code="malformed_frame", field="type")

    async def publish(self, events: list[Any]) -> None:
        """The stored events on the tenant's stream (best effort: the store is the truth)."""
        channel = events_channel(self.tenant_id)
        try:
            async with self.services.redis.pipeline(transaction=False) as pipe:
                for event in events:
                    pipe.publish(channel, _json({
                        "type": "agent", "agent_id": str(self.agent_id), "seq": event.seq,
                        "kind": event.kind, "at": event.at.isoformat(), "data": event.data}))
                await pipe.execute()
        except Exception:
            log.debug("publishing agent events failed", exc_info=True)

    async def beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            await self.send({"type": "heartbeat", "at": datetime.now(UTC).isoformat()})

    async def commands(self, pubsub: Any) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                continue
            if message["data"] in (DISCONNECT, DISCONNECT.encode()):
                await self.ws.close(code=4000, reason="disconnected_by_platform")
                return
            await self.deliver_commands()

    async def deliver_commands(self) -> None:
        """Send every open command not sent on this socket yet (all of them after a reconnect)."""
        fresh = [c for c in await self.store.open_commands(self.agent_id)
                 if c["id"] not in self.sent_commands]
        for command in fresh:
            await self.send({"type": "command", "command_id": str(command["id"]),
                             "command": command["command"], "args": command["args"]})
            self.sent_commands.add(command["id"])
        if fresh:
            await self.store.delivered([c["id"] for c in fresh])


# -- REST --------------------------------------------------------------------------------------

class CommandCreate(Request):
    command: Literal["start_bot", "stop_bot", "kill_switch"]
    args: dict[str, str] = Field(default_factory=dict, description="bot (start/stop), reason")


def _command_args(body: CommandCreate) -> dict[str, str]:
    allowed = {"start_bot": {"bot"}, "stop_bot": {"bot"}, "kill_switch": {"reason"}}[body.command]
    unknown = sorted(set(body.args) - allowed)
    if unknown:
        raise Invalid(f"{body.command} takes {', '.join(sorted(allowed))}",
                      field=f"args.{unknown[0]}")
    if "bot" in allowed and not 1 <= len(body.args.get("bot", "").strip()) <= 100:
        raise Invalid("args.bot must name the agent's bot", field="args.bot")
    if len(body.args.get("reason", "")) > 500:
        raise Invalid("args.reason may be at most 500 characters", field="args.reason")
    return body.args


@router.get("/v1/agents")
async def list_agents(principal: ViewerDep, services: ServicesDep) -> list[dict[str, Any]]:
    """The tenant's agents with status online, stale (heartbeats missing) or offline."""
    tenant = tenant_of(principal)
    return await AgentStore(services.db, tenant.id, tenant.slug).list_agents()


@router.get("/v1/agents/{agent_id}")
async def get_agent(agent_id: str, principal: ViewerDep, services: ServicesDep
                    ) -> dict[str, Any]:
    tenant = tenant_of(principal)
    return await AgentStore(services.db, tenant.id, tenant.slug).get_agent(agent_id)


@router.get("/v1/agents/{agent_id}/events")
async def agent_events(agent_id: str, principal: ViewerDep, services: ServicesDep,
                       after: int = Query(0, ge=0, description="events with seq > after"),
                       limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    """The agent's stored events in sequence order."""
    tenant = tenant_of(principal)
    return await AgentStore(services.db, tenant.id, tenant.slug).events(agent_id, after=after,
                                                                         limit=limit)


@router.get("/v1/agents/{agent_id}/commands")
async def agent_commands(agent_id: str, principal: ViewerDep, services: ServicesDep
                         ) -> list[dict[str, Any]]:
    tenant = tenant_of(principal)
    return await AgentStore(services.db, tenant.id, tenant.slug).commands(agent_id)


@router.post("/v1/agents/{agent_id}/commands", status_code=status.HTTP_202_ACCEPTED)
async def post_command(agent_id: str, body: CommandCreate, principal: TraderDep,
                       services: ServicesDep) -> dict[str, Any]:
    """Queue a command; it is delivered when the agent is online and kept until it answers."""
    tenant = tenant_of(principal)
    args = _command_args(body)
    store = AgentStore(services.db, tenant.id, tenant.slug)
    agent = await store.get_agent(agent_id)
    command = await store.add_command(agent["id"], body.command, args, principal.actor)
    with contextlib.suppress(Exception):  # the holder also sends open commands on connect
        await services.redis.publish(command_channel(tenant.id, agent["id"]), str(command["id"]))
    return command


@router.post("/v1/agents/{agent_id}/disconnect", status_code=status.HTTP_202_ACCEPTED)
async def disconnect(agent_id: str, principal: AdminDep, services: ServicesDep
                     ) -> dict[str, Any]:
    """Close the agent's socket on whichever replica holds it (it reconnects by itself)."""
    tenant = tenant_of(principal)
    agent = await AgentStore(services.db, tenant.id, tenant.slug).get_agent(agent_id)
    receivers = await services.redis.publish(command_channel(tenant.id, agent["id"]), DISCONNECT)
    return {"agent_id": str(agent["id"]), "sockets": int(receivers)}
