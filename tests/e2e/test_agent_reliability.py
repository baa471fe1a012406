"""The real `atp-agent` against the gateway: forced disconnects, kills, a gateway restart.

Each test runs the agent as a subprocess (as a customer runs it) with its own SQLite
database, and checks on the platform that every event the agent made arrived exactly
once and in order: the stored sequence is 1..N with no gap, where N is the last sequence
the agent made, and fills and client order ids are not repeated.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tenancy.settings import Settings
from tests.conftest import TenantFactory, wait_for

CONFIG = """
name: reliability
seed: 11
interval_seconds: 60
speed: 40
heartbeat_seconds: 1
backoff: {initial: 0.05, maximum: 0.5, reset_after: 1}
bots:
  - name: fast-sma
    strategy: sma_crossover
    symbols: [BTC-USD]
    params: {fast: 2, slow: 4, quantity: "0.01"}
    capital: 100000
"""


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class AgentProcess:
    def __init__(self, tmp: Path, url: str, key: str) -> None:
        self.db, self.config, self.url, self.key = tmp / "agent.db", tmp / "agent.yaml", url, key
        self.config.write_text(CONFIG)
        self.log = (tmp / "agent.log").open("ab")  # a file: a full pipe would block the agent
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "ATP_AGENT_API_KEY": self.key}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--server", self.url, "--config",
             str(self.config), "--db", str(self.db)], env=env, stdout=subprocess.DEVNULL,
            stderr=self.log)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    def status(self) -> dict[str, Any]:
        status = self.status_if_ready()
        assert status is not None, "atp-agent status failed"
        return status

    def status_if_ready(self) -> dict[str, Any] | None:
        """The status, or None while the agent has not created its database yet."""
        out = subprocess.run([sys.executable, "-m", "agent.cli", "status", "--db", str(self.db),
                              "--json"], capture_output=True, text=True, timeout=60)
        return dict(json.loads(out.stdout)) if out.returncode == 0 else None


async def _all_events(http: httpx.AsyncClient, key: str, agent_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        page = (await http.get(f"/v1/agents/{agent_id}/events?after={len(events)}&limit=1000",
                               headers=bearer(key))).json()
        if not page:
            return events
        events += page


async def _drained(http: httpx.AsyncClient, key: str, agent: AgentProcess) -> list[dict[str, Any]]:
    """Stop the bot through the platform (a command), wait until the platform holds every
    event the agent made, stop the agent, and return the platform's events."""
    agent_id = agent.status()["agent_id"]
    command = (await http.post(f"/v1/agents/{agent_id}/commands", headers=bearer(key),
                               json={"command": "stop_bot", "args": {"bot": "fast-sma"}})).json()

    async def stopped() -> bool:
        got = (await http.get(f"/v1/agents/{agent_id}/commands", headers=bearer(key))).json()
        return any(c["id"] == command["id"] and c["status"] == "done" for c in got)
    await wait_for(stopped, timeout=60, interval=0.3)
    last: list[int] = []

    async def synced() -> bool:  # everything acknowledged, and nothing new for a while
        status = agent.status()
        last.append(status["next_seq"])
        return bool(status["pending"] == 0 and status["acked"] == status["next_seq"] - 1
                    and len(last) >= 3 and last[-3] == last[-1])
    await wait_for(synced, timeout=120, interval=0.5)
    agent.stop()
    status = agent.status()
    assert status["pending"] == 0, status
    events = await _all_events(http, key, agent_id)
    assert [e["seq"] for e in events] == list(range(1, status["next_seq"])), "a gap or a repeat"
    fills = [e["data"]["fill_id"] for e in events if e["kind"] == "fill"]
    assert fills and len(fills) == len(set(fills))
    return events


@pytest.mark.timeout(600)
async def test_100_forced_disconnects_lose_and_repeat_nothing(
        http: httpx.AsyncClient, gateway_url: str, make_tenant: TenantFactory,
        tmp_path: Path) -> None:
    t = await make_tenant()
    agent = AgentProcess(tmp_path, gateway_url.replace("http://", "ws://") + "/v1/agent/ws",
                         t.api_key)
    agent.start()
    try:
        async def connected() -> bool:
            listed = (await http.get("/v1/agents", headers=bearer(t.api_key))).json()
            return bool(listed) and listed[0]["status"] == "online"
        await wait_for(connected, timeout=60, interval=0.2)
        agent_id = agent.status()["agent_id"]
        rng = random.Random(5)
        kills = set(rng.sample(range(100), 10))
        for i in range(100):
            await asyncio.sleep(rng.uniform(0.05, 0.3))
            if i in kills:  # the agent process dies mid-stream and comes back
                agent.kill()
                agent.start()
            else:  # the platform closes the socket; the agent reconnects by itself
                await http.post(f"/v1/agents/{agent_id}/disconnect", headers=bearer(t.api_key))
        events = await _drained(http, t.api_key, agent)
        assert len(events) > 100
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.kill()


@pytest.mark.timeout(600)
async def test_a_gateway_restart_while_the_agent_trades_offline_drains_the_backlog(
        http: httpx.AsyncClient, gateway_url: str, settings: Settings,
        make_tenant: TenantFactory, tmp_path: Path) -> None:
    from ray import serve

    from serve.app import GATEWAY_APP, build_app

    t = await make_tenant()
    agent = AgentProcess(tmp_path, gateway_url.replace("http://", "ws://") + "/v1/agent/ws",
                         t.api_key)
    agent.start()
    try:
        async def acked_some() -> bool:
            status = agent.status_if_ready()
            return status is not None and status["acked"] > 0
        await wait_for(acked_some, timeout=60, interval=0.3)
        serve.delete(GATEWAY_APP)  # the platform is gone; the agent keeps trading
        before = agent.status()
        await asyncio.sleep(5)
        offline = agent.status()
        assert offline["next_seq"] > before["next_seq"] and offline["pending"] > 0
        serve.run(build_app(settings, num_cpus=0.25), name=GATEWAY_APP, route_prefix="/")
        events = await _drained(http, t.api_key, agent)
        assert len(events) >= offline["next_seq"] - 1
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.kill()
