"""`/v1/stream`: the tenant's live orders, fills, positions and risk events over a WebSocket.

Authenticated like HTTP (``Authorization: Bearer …``, or ``?token=`` for browsers, which
cannot set headers on a WebSocket). Events come from the tenant's Redis channel, so any
gateway replica serves any tenant; the channel is chosen from the credential only. A
heartbeat frame is sent when nothing happened for 15 seconds. Refusals close the
socket with 4401 (unauthenticated) or 4403 (forbidden) and the error code as reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Coroutine
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from actors.tenant_runtime import events_channel
from serve.deps import Services
from tenancy.auth import Principal
from tenancy.roles import Role, require_role
from trading.errors import AtpError, Forbidden

router = APIRouter(tags=["stream"])

HEARTBEAT_SECONDS = 15.0


def _credential(ws: WebSocket) -> str:
    scheme, _, value = ws.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    return ws.query_params.get("token", "") or ws.headers.get("x-api-key", "")


async def authenticate_socket(ws: WebSocket, role: Role) -> Principal | None:
    """The socket's tenant principal with at least `role`, or None after closing it with
    4401 (unauthenticated) or 4403 (forbidden) and the error code as the reason."""
    services: Services = ws.app.state.services
    try:
        principal = await services.auth_cache.authenticate(_credential(ws))
        if principal.tenant is None or principal.role is None:
            raise Forbidden("a tenant credential is required", code="tenant_required")
        require_role(principal.role, role)
    except AtpError as exc:
        await ws.accept()  # accept first, so the client sees the close code and reason
        await ws.close(code=4403 if isinstance(exc, Forbidden) else 4401, reason=exc.code)
        return None
    return principal


async def run_until_one_ends(pubsub: Any, *work: Coroutine[Any, Any, None]) -> None:
    """Run a socket's loops until one ends (the client left, or an error); then cancel the
    others and close the Redis subscription."""
    tasks = [asyncio.create_task(w) for w in work]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await pubsub.unsubscribe()
            await pubsub.aclose()


@router.websocket("/v1/stream")
async def stream(ws: WebSocket) -> None:
    services: Services = ws.app.state.services
    principal = await authenticate_socket(ws, Role.VIEWER)
    if principal is None:
        return
    tenant = principal.tenant
    assert tenant is not None
    await ws.accept()
    pubsub = services.redis.pubsub()
    await pubsub.subscribe(events_channel(tenant.id))
    await ws.send_text(json.dumps({"type": "hello", "tenant": tenant.slug}))

    async def forward() -> None:
        idle = 0.0
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                idle += 1.0
                if idle >= HEARTBEAT_SECONDS:
                    await ws.send_text(json.dumps({"type": "heartbeat"}))
                    idle = 0.0
                continue
            idle = 0.0
            data = message["data"]
            await ws.send_text(data.decode() if isinstance(data, bytes) else str(data))

    async def until_closed() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await ws.receive_text()  # the client says nothing; this notices it leaving

    try:
        await run_until_one_ends(pubsub, forward(), until_closed())
    finally:
        with contextlib.suppress(Exception):
            await ws.close()
