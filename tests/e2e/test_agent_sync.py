"""The agent protocol's server side over a real WebSocket through Serve (docs/agent.md)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import websockets

from tests.conftest import TenantFactory, wait_for


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def event(seq: int, kind: str = "log", **data: Any) -> dict[str, Any]:
    return {"seq": seq, "kind": kind, "at": datetime.now(UTC).isoformat(),
            "data": data or {"message": f"event {seq}"}}


class Agent:
    """A bare protocol client (the real one is `agent.client`)."""

    def __init__(self, url: str, key: str, agent_id: uuid.UUID | None = None) -> None:
        self.url, self.key = url, key
        self.id = agent_id or uuid.uuid4()
        self.ws: Any = None

    async def __aenter__(self) -> Agent:
        self.ws = await websockets.connect(self.url, additional_headers=bearer(self.key))
        await self.send({"type": "hello", "agent_id": str(self.id), "name": "test agent",
                         "version": "0.1", "last_ack": 0})
        self.welcome = await self.expect("welcome")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def expect(self, kind: str) -> dict[str, Any]:
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), 15))
            if frame["type"] == kind:
                return dict(frame)
            if frame["type"] not in ("heartbeat", "command"):
                raise AssertionError(f"expected {kind}, got {frame}")

    async def events(self, *events: dict[str, Any]) -> dict[str, Any]:
        await self.send({"type": "events", "events": list(events)})
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), 15))
            if frame["type"] in ("ack", "resend", "error"):
                return dict(frame)


@pytest.fixture
def agent_url(gateway_url: str) -> str:
    return gateway_url.replace("http://", "ws://") + "/v1/agent/ws"


async def test_events_are_stored_once_in_order_with_acks_and_resends(
        http: httpx.AsyncClient, agent_url: str, make_tenant: TenantFactory) -> None:
    t = await make_tenant()
    async with Agent(agent_url, t.api_key) as agent:
        assert agent.welcome["watermark"] == 0 and agent.welcome["max_batch"] == 500
        assert (await agent.events(*(event(i) for i in range(1, 6)))) == {"type": "ack", "upto": 5}
        # a retry overlapping what is stored: the duplicates are skipped
        assert (await agent.events(*(event(i) for i in range(4, 9))))["upto"] == 8
        # a gap: nothing stored, resend from the watermark + 1
        assert await agent.events(event(10), event(11)) == {"type": "resend", "from": 9}
        # malformed frames: an error frame each, the connection stays, nothing stored
        await agent.ws.send("not json")
        assert (await agent.expect("error"))["code"] == "malformed_frame"
        bad = await agent.events({"seq": 9, "kind": "weird", "at": "now", "data": {}})
        assert (bad["code"], bad["field"]) == ("malformed_frame", "events[0].kind")
        big = await agent.events(*(event(i) for i in range(9, 510)))
        assert (big["code"], big["field"]) == ("batch_too_large", "events")
        assert "500" in big["message"]
        assert (await agent.events(event(9)))["upto"] == 9
    stored = (await http.get(f"/v1/agents/{agent.id}/events", headers=bearer(t.api_key))).json()
    assert [e["seq"] for e in stored] == list(range(1, 10))
    # A new connection resumes from the server's watermark.
    async with Agent(agent_url, t.api_key, agent.id) as again:
        assert again.welcome["watermark"] == 9


async def test_registry_status_books_and_stream(
        http: httpx.AsyncClient, gateway_url: str, agent_url: str,
        make_tenant: TenantFactory) -> None:
    t = await make_tenant()
    key = bearer(t.api_key)
    stream = await websockets.connect(gateway_url.replace("http://", "ws://") + "/v1/stream",
                                      additional_headers=key)
    await stream.recv()  # hello
    try:
        async with Agent(agent_url, t.api_key) as agent:
            [listed] = (await http.get("/v1/agents", headers=key)).json()
            assert listed["id"] == str(agent.id) and listed["status"] == "online"
            position = event(1, "position", account="agent:sma", symbol="BTC-USD",
                             quantity="0.5", average_cost="60000", realized_pnl="12.5")
            pnl = event(2, "pnl", account="agent:sma", cash="70000", equity="100012.5",
                        realized_pnl="12.5", unrealized_pnl="0", fees="1.2")
            assert (await agent.events(position, pnl))["upto"] == 2
            seen = json.loads(await asyncio.wait_for(stream.recv(), 10))
            assert (seen["type"], seen["kind"], seen["seq"]) == ("agent", "position", 1)
        positions = (await http.get("/v1/positions", headers=key)).json()
        mine = [p for p in positions if p["source"] == "agent"]
        assert [(p["account"], p["symbol"], p["quantity"], p["agent_id"]) for p in mine] == [
            ("agent:sma", "BTC-USD", "0.5", str(agent.id))]
        books = [a for a in (await http.get("/v1/pnl", headers=key)).json()
                 if a["source"] == "agent"]
        assert books[0]["snapshot"]["equity"] == "100012.5"

        async def offline() -> bool:
            got = (await http.get(f"/v1/agents/{agent.id}", headers=key)).json()
            return bool(got["status"] == "offline")
        await wait_for(offline, timeout=10, interval=0.2)
    finally:
        await stream.close()


async def test_commands_are_delivered_online_queued_offline_and_acknowledged(
        http: httpx.AsyncClient, agent_url: str, make_tenant: TenantFactory) -> None:
    t = await make_tenant()
    key = bearer(t.api_key)
    async with Agent(agent_url, t.api_key) as agent:
        posted = await http.post(f"/v1/agents/{agent.id}/commands", headers=key,
                                 json={"command": "stop_bot", "args": {"bot": "sma"}})
        assert posted.status_code == 202, posted.text
        command = await agent.expect("command")
        assert (command["command"], command["args"]) == ("stop_bot", {"bot": "sma"})
        await agent.send({"type": "command_ack", "command_id": command["command_id"],
                          "status": "done"})

        async def done() -> bool:
            got = (await http.get(f"/v1/agents/{agent.id}/commands", headers=key)).json()
            return bool(got[0]["status"] == "done")
        await wait_for(done, timeout=10, interval=0.2)
    # offline: queued, then delivered on the next connection
    queued = (await http.post(f"/v1/agents/{agent.id}/commands", headers=key,
                              json={"command": "kill_switch", "args": {"reason": "test"}})).json()
    assert queued["status"] == "queued"
    async with Agent(agent_url, t.api_key, agent.id) as back:
        command = await back.expect("command")
        assert command["command_id"] == queued["id"] and command["command"] == "kill_switch"
    for body, field in (({"command": "reboot"}, "command"),
                        ({"command": "start_bot", "args": {}}, "args.bot"),
                        ({"command": "start_bot", "args": {"bot": "x", "x": "1"}}, "args.x")):
        r = await http.post(f"/v1/agents/{agent.id}/commands", headers=key, json=body)
        assert r.status_code == 422 and r.json()["error"]["field"] == field, (body, r.text)


async def test_credentials_and_tenants_are_kept_apart(
        http: httpx.AsyncClient, agent_url: str, make_tenant: TenantFactory) -> None:
    a, b = await make_tenant(), await make_tenant()
    for headers, code, reason in ((bearer("atp_" + "x" * 40), 4401, "invalid_api_key"),
                                  ({}, 4401, "missing_credential")):
        with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
            async with websockets.connect(agent_url, additional_headers=headers) as ws:
                await ws.recv()
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (code, reason)
    viewer = (await http.post("/v1/api-keys", headers=bearer(a.api_key),
                              json={"name": "ro", "role": "viewer"})).json()["key"]
    with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
        async with websockets.connect(agent_url, additional_headers=bearer(viewer)) as ws:
            await ws.recv()
    assert info.value.rcvd.code == 4403
    # two agents of A and one of B, the same agent id in both tenants
    shared = uuid.uuid4()
    async with Agent(agent_url, a.api_key, shared) as a1, Agent(agent_url, a.api_key) as a2, \
            Agent(agent_url, b.api_key, shared) as b1:
        assert (await a1.events(event(1)))["upto"] == 1
        assert (await a2.events(event(1), event(2)))["upto"] == 2
        assert b1.welcome["watermark"] == 0
        assert (await b1.events(event(1, message="b's")))["upto"] == 1
    a_agents = {x["id"] for x in (await http.get("/v1/agents", headers=bearer(a.api_key))).json()}
    b_agents = {x["id"] for x in (await http.get("/v1/agents", headers=bearer(b.api_key))).json()}
    assert a_agents == {str(shared), str(a2.id)} and b_agents == {str(shared)}
    b_events = (await http.get(f"/v1/agents/{shared}/events", headers=bearer(b.api_key))).json()
    assert [e["data"] for e in b_events] == [{"message": "b's"}]
    r = await http.post(f"/v1/agents/{a2.id}/commands", headers=bearer(b.api_key),
                        json={"command": "kill_switch"})
    assert r.status_code == 404


async def test_the_platform_can_close_an_agents_socket(
        http: httpx.AsyncClient, agent_url: str, make_tenant: TenantFactory) -> None:
    t = await make_tenant()
    async with Agent(agent_url, t.api_key) as agent:
        r = await http.post(f"/v1/agents/{agent.id}/disconnect", headers=bearer(t.api_key))
        assert r.status_code == 202 and r.json()["sockets"] == 1
        with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
            while True:
                await asyncio.wait_for(agent.ws.recv(), 15)
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (4000, "disconnected_by_platform")
