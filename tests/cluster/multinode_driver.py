"""The platform's own code against the multi-node test cluster, one phase per run.

Run by tests/cluster/test_multinode.py in a subprocess (the pytest process already holds the
session's Ray): ``python -m tests.cluster.multinode_driver PHASE CONFIG_JSON``, with
``RAY_ADDRESS`` and the cluster's token in the environment. Prints one JSON line, prefixed
``RESULT ``, for the test to assert on.

* ``setup``: migrate a fresh database, give the ``enterprise`` plan the worker group
  ``enterprise``, provision three tenants, start the market feed (a system actor) and four
  bots with `actors.supervisor.start_bot`, wait until every bot has traded; report where
  every actor runs.
* ``verify`` (after the test killed a worker node): wait until the GCS marks that node
  dead, then until every tenant actor is alive
  again, on a live node; wait until every bot trades again; stop the bots; report placement,
  restarts and the trading store's invariants per tenant.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import ray
from sqlalchemy import text

from actors.bots import BotSpec, BotStore, bot_account
from actors.feed import FEED_NAME, FEED_NAMESPACE, get_or_create_feed
from actors.supervisor import reconcile, start_bot, stop_bot
from actors.tenant_runtime import tenant_namespace
from tenancy.db import Database
from tenancy.migrate import migrate_all
from tenancy.plans import get_plan
from tenancy.settings import Settings, load_settings
from tenancy.tenants import provision

# tenant key -> (plan, number of bots)
TENANTS = {"a": ("professional", 2), "b": ("professional", 1), "e": ("enterprise", 1)}
BOT_CPUS = 0.4  # 4 bots + 3 x (risk + execution) fit one 2-CPU worker after losing the other


def _settings(config: dict[str, Any]) -> Settings:
    return load_settings(dev_mode=True, data_dir=Path(config["data_dir"]),
                         database_url=config["database_url"], redis_url=config["redis_url"],
                         system_resources=config["system_resources"], actor_start_seconds=120)


def _alive_actors(namespace: str) -> list[Any]:
    from ray.util.state import list_actors

    return list(list_actors(address=ray.get_runtime_context().gcs_address, detail=True,
                            filters=[("ray_namespace", "=", namespace), ("state", "=", "ALIVE")]))


def _placement(tenants: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, t in tenants.items():
        out[key] = {a.name: {"node": a.node_id, "restarts": int(a.num_restarts or 0),
                             "resources": a.required_resources}
                    for a in _alive_actors(tenant_namespace(t["slug"]))}
    feed = [a for a in _alive_actors(FEED_NAMESPACE) if a.name == FEED_NAME]
    out["_feed"] = feed[0].node_id if feed else None
    return out


def _nodes() -> dict[str, Any]:
    return {n["NodeID"]: {"alive": n["Alive"], "resources": n["Resources"]} for n in ray.nodes()}


async def _fills(db: Database, tenant_id: uuid.UUID, slug: str) -> dict[str, int]:
    async with db.tenant(tenant_id, slug) as uow:
        rows = (await uow.conn.execute(text("SELECT account, count(*) FROM fills GROUP BY account"))).all()
    return {r[0]: int(r[1]) for r in rows}


async def _wait_trading(db: Database, tenants: dict[str, Any], since: dict[str, int],
                        timeout: float) -> dict[str, int]:
    """Wait until every bot account has more fills than in `since`; return the counts."""
    deadline = time.monotonic() + timeout
    while True:
        counts: dict[str, int] = {}
        for t in tenants.values():
            fills = await _fills(db, uuid.UUID(t["id"]), t["slug"])
            counts.update({acc: fills.get(acc, 0) for acc in t["accounts"]})
        if all(counts[acc] > since.get(acc, 0) for acc in counts):
            return counts
        if time.monotonic() > deadline:
            raise TimeoutError(f"bots did not trade within {timeout:g} s: fills {counts}, before {since}")
        await asyncio.sleep(1)


async def setup(config: dict[str, Any]) -> dict[str, Any]:
    settings = _settings(config)
    db = Database.from_url(settings.database_url or "", pool_size=4)
    reports = await migrate_all(db)
    assert all(r.error is None for r in reports), reports
    async with db.platform() as uow:
        await uow.conn.execute(text("UPDATE platform.plans SET worker_group = 'enterprise'"
                                    " WHERE code = 'enterprise'"))
        await uow.commit()
        plans = {code: await get_plan(uow.conn, code) for code in ("professional", "enterprise")}
    feed = get_or_create_feed(settings, symbols=["BTC-USD"], interval=60.0, speed=240.0, autostart=True)
    await feed.start.remote()
    tenants: dict[str, Any] = {}
    for key, (plan, bots) in TENANTS.items():
        slug = f"tmn{key}-{uuid.uuid4().hex[:6]}"
        made = await provision(db, settings.master_key_bytes, name=f"Multinode {key}", plan=plan,
                               email=f"{slug}@example.com", slug=slug, password="correct horse battery")
        tenant = made.tenant
        store = BotStore(db, tenant.id, slug)
        accounts = []
        for i in range(bots):
            bot = await store.create(BotSpec(
                name=f"sma-{i}", strategy="sma_crossover", symbols=("BTC-USD",), capital=Decimal(100_000),
                params={"fast": 2, "slow": 4, "quantity": "0.1"}, num_cpus=BOT_CPUS, memory_mb=128))
            await start_bot(settings, db, tenant.id, slug, plans[plan], bot.id)
            accounts.append(bot_account(bot.id))
        tenants[key] = {"id": str(tenant.id), "slug": slug, "plan": plan, "accounts": accounts}
    fills = await _wait_trading(db, tenants, {}, timeout=120)
    await db.dispose()
    return {"tenants": tenants, "placement": _placement(tenants), "nodes": _nodes(), "fills": fills,
            "driver_node": ray.get_runtime_context().get_node_id()}


async def _wait_node_dead(node_id: str, timeout: float) -> float:
    """Wait until the GCS has marked `node_id` dead; return how long that took here."""
    started = time.monotonic()
    while _nodes().get(node_id, {}).get("alive", False):
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"the GCS still holds node {node_id} alive after {timeout:g} s")
        await asyncio.sleep(0.5)
    return time.monotonic() - started


async def _wait_restored(tenants: dict[str, Any], expected: dict[str, set[str]], timeout: float
                         ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        alive_nodes = {n for n, info in _nodes().items() if info["alive"]}
        placement = _placement(tenants)
        done = all(set(placement[k]) >= expected[k]
                   and all(a["node"] in alive_nodes for a in placement[k].values()) for k in tenants)
        if done:
            return placement
        if time.monotonic() > deadline:
            raise TimeoutError(f"actors not all alive on live nodes within {timeout:g} s: {placement}")
        await asyncio.sleep(1)


async def _invariants(db: Database, tenant_id: uuid.UUID, slug: str) -> dict[str, Any]:
    async with db.tenant(tenant_id, slug) as uow:
        c = uow.conn
        bad_positions = (await c.execute(text(
            "SELECT p.account, p.symbol, p.quantity, coalesce(f.net, 0) FROM positions p"
            " FULL JOIN (SELECT account, symbol, sum(CASE side WHEN 'buy' THEN quantity"
            " ELSE -quantity END) AS net FROM fills GROUP BY account, symbol) f"
            " USING (account, symbol) WHERE coalesce(p.quantity, 0) <> coalesce(f.net, 0)"))).all()
        bad_orders = (await c.execute(text(
            "SELECT o.client_order_id, o.filled_quantity, coalesce(sum(f.quantity), 0) FROM orders o"
            " LEFT JOIN fills f ON f.order_id = o.id GROUP BY o.id"
            " HAVING o.filled_quantity <> coalesce(sum(f.quantity), 0)"))).all()
        stuck = (await c.execute(text("SELECT count(*) FROM orders WHERE status = 'new'"))).scalar_one()
        orders = (await c.execute(text("SELECT count(*), count(DISTINCT client_order_id) FROM orders"))).one()
        no_new_event = (await c.execute(text(
            "SELECT count(*) FROM orders o WHERE (SELECT count(*) FROM order_events e"
            " WHERE e.order_id = o.id AND e.from_status IS NULL) <> 1"))).scalar_one()
        fills = (await c.execute(text("SELECT count(*) FROM fills"))).scalar_one()
    return {"orders": int(orders[0]), "distinct_client_ids": int(orders[1]), "fills": int(fills),
            "positions_not_sum_of_fills": [list(map(str, r)) for r in bad_positions],
            "orders_fill_mismatch": [list(map(str, r)) for r in bad_orders],
            "orders_stuck_new": int(stuck), "orders_without_one_creation_event": int(no_new_event)}


async def verify(config: dict[str, Any]) -> dict[str, Any]:
    settings = _settings(config)
    tenants: dict[str, Any] = config["tenants"]
    db = Database.from_url(settings.database_url or "", pool_size=4)
    expected = {k: set(config["placement_before"][k]) for k in tenants}
    lost_after = await _wait_node_dead(config["dead_node"], timeout=60)
    placement = await _wait_restored(tenants, expected, timeout=150)
    reconciled = await reconcile(settings, db)  # Ray restarted them: nothing left to do
    fills = await _wait_trading(db, tenants, config["fills_before"], timeout=120)
    invariants = {}
    for key, t in tenants.items():
        store = BotStore(db, uuid.UUID(t["id"]), t["slug"])
        for bot in await store.list():
            await stop_bot(settings, db, uuid.UUID(t["id"]), t["slug"], bot.id)
        invariants[key] = await _invariants(db, uuid.UUID(t["id"]), t["slug"])
    left = {k: sorted(a.name for a in _alive_actors(tenant_namespace(t["slug"]))) for k, t in tenants.items()}
    await db.dispose()
    return {"placement": placement, "nodes": _nodes(), "fills": fills, "reconciled": reconciled,
            "node_lost_after_s": round(lost_after, 1),
            "invariants": invariants, "left_after_stop": left}


def main() -> None:
    phase, config = sys.argv[1], json.loads(sys.argv[2])
    ray.init(address=config["address"], log_to_driver=False)
    try:
        result = asyncio.run({"setup": setup, "verify": verify}[phase](config))
    finally:
        ray.shutdown()
    print("RESULT " + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()
