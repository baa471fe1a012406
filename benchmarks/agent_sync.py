"""Agent sync: backlog drain rate through the gateway, and heartbeat-to-status latency.

1. Drain: 50,000 events queued in a real agent outbox (SQLite) while offline; then the
   real `agent.client.AgentClient` connects to the gateway (Ray Serve, loopback) and
   syncs; the rate is events acknowledged per second until the outbox is empty. Baseline
   in the same run: a bare protocol client sending the same events, prepared in memory,
   with the same batch size and window, to the same gateway (the server's own cost).
2. Heartbeat to status: a connected agent sends a heartbeat; the time until
   `GET /v1/agents/{id}` shows its `last_seen_at` moved (p50 / p90 / max of 30).

Run: ``cd benchmarks && ../.venv/bin/python agent_sync.py`` (about 2 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import ray
import websockets
from _common import bench_database_url, recreate_database
from ray import serve

from agent.client import AgentClient
from agent.outbox import Outbox
from serve.app import build_app
from tenancy.db import Database
from tenancy.migrate import migrate_all
from tenancy.settings import load_settings
from tenancy.tenants import provision

PORT = 8766
BATCH = 500
WINDOW = 4


def event_data(i: int) -> dict[str, object]:
    return {"account": "agent:bench", "symbol": "BTC-USD", "client_order_id": f"bench-{i}",
            "side": "buy", "quantity": "0.01", "status": "filled", "price": "60000.5"}


async def prepare(url: str, master_key: bytes) -> str:
    await recreate_database(url, "tenant_bench_agent")
    db = Database.from_url(url.replace("postgresql://", "postgresql+asyncpg://"), pool_size=2)
    try:
        await migrate_all(db)
        created = await provision(db, master_key, name="Bench agent", plan="enterprise",
                                  email="bench@agent.example.com", slug="bench-agent")
        return created.api_key
    finally:
        await db.dispose()


async def drain_agent(ws_url: str, key: str, events: int) -> float:
    path = Path(tempfile.mkdtemp(prefix="atp-bench-agent-")) / "agent.db"
    outbox = Outbox(path)
    with outbox.transaction():
        for i in range(events):
            outbox.append("order", event_data(i))
    client = AgentClient(outbox, ws_url, key, name="bench", window=WINDOW)
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(client.run(stop))
    while outbox.acked() < events:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    outbox.close()
    return events / elapsed


async def drain_bare(ws_url: str, key: str, events: int) -> float:
    at = datetime.now(UTC).isoformat()
    frames = [json.dumps({"type": "events", "events": [
        {"seq": s, "kind": "order", "at": at, "data": event_data(s)}
        for s in range(first, min(first + BATCH, events + 1))]})
        for first in range(1, events + 1, BATCH)]
    started = time.perf_counter()
    async with websockets.connect(ws_url, additional_headers={"Authorization": f"Bearer {key}"},
                                  max_size=None) as ws:
        await ws.send(json.dumps({"type": "hello", "agent_id": str(uuid.uuid4()),
                                  "name": "bare", "version": "bench", "last_ack": 0}))
        assert json.loads(await ws.recv())["type"] == "welcome"
        sent = acked = 0
        while acked < events:
            while sent < len(frames) and sent - acked // BATCH < WINDOW:
                await ws.send(frames[sent])
                sent += 1
            frame = json.loads(await ws.recv())
            if frame["type"] == "ack":
                acked = frame["upto"]
            elif frame["type"] != "heartbeat":
                raise AssertionError(frame)
    return events / (time.perf_counter() - started)


async def heartbeat_latency(ws_url: str, base: str, key: str, samples: int) -> list[float]:
    headers = {"Authorization": f"Bearer {key}"}
    agent_id = uuid.uuid4()
    latencies = []
    async with websockets.connect(ws_url, additional_headers=headers) as ws, \
            httpx.AsyncClient(base_url=base, headers=headers) as http:
        await ws.send(json.dumps({"type": "hello", "agent_id": str(agent_id), "name": "hb",
                                  "version": "bench", "last_ack": 0}))
        await ws.recv()
        for _ in range(samples):
            before = (await http.get(f"/v1/agents/{agent_id}")).json()["last_seen_at"]
            await asyncio.sleep(0.02)  # so the new time differs
            sent = time.perf_counter()
            await ws.send(json.dumps({"type": "heartbeat", "at": datetime.now(UTC).isoformat()}))
            while (await http.get(f"/v1/agents/{agent_id}")).json()["last_seen_at"] == before:
                await asyncio.sleep(0.002)
            latencies.append((time.perf_counter() - sent) * 1000)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    db_url = bench_database_url("atp_bench_agent")
    settings = load_settings(
        dev_mode=True, data_dir=tempfile.mkdtemp(prefix="atp-bench-agent-"), database_url=db_url,
        redis_url=os.environ.get("ATP_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"))
    key = asyncio.run(prepare(db_url, settings.master_key_bytes))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": PORT},
                    logging_config={"enable_access_log": False})
        serve.run(build_app(settings, num_cpus=0.25), name="gateway", route_prefix="/")
        base = f"http://127.0.0.1:{PORT}"
        ws_url = f"ws://127.0.0.1:{PORT}/v1/agent/ws"
        print(f"agent sync, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; Ray {ray.__version__}, "
              f"Python {platform.python_version()}, {os.cpu_count()} CPUs; gateway through "
              f"Serve on loopback; batches of {BATCH}, {WINDOW} in flight\n")
        agent_rates, bare_rates = [], []
        for i in range(args.rounds):
            bare_rates.append(asyncio.run(drain_bare(ws_url, key, args.events)))
            agent_rates.append(asyncio.run(drain_agent(ws_url, key, args.events)))
            print(f"round {i + 1}: bare protocol client {bare_rates[-1]:8,.0f} events/s   "
                  f"atp-agent (SQLite outbox) {agent_rates[-1]:8,.0f} events/s")
        agent_rate, bare_rate = statistics.median(agent_rates), statistics.median(bare_rates)
        print(f"\ndrain of {args.events:,} queued events, medians of {args.rounds} rounds:")
        print(f"  atp-agent          {agent_rate:>10,.0f} events/s   <- goal >= 5,000")
        print(f"  bare client        {bare_rate:>10,.0f} events/s   (baseline: the server alone)")
        print(f"  agent / baseline = {agent_rate / bare_rate:.2f}")
        latencies = asyncio.run(heartbeat_latency(ws_url, base, key, 30))
        ordered = sorted(latencies)
        print(f"\nheartbeat -> registry (GET /v1/agents/{{id}} shows it): p50 "
              f"{statistics.median(ordered):.1f} ms, p90 {ordered[int(0.9 * len(ordered))]:.1f}"
              f" ms, max {ordered[-1]:.1f} ms ({len(ordered)} samples)")
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
