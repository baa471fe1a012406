"""Bot definitions and the strategy catalogue over HTTP: validation, roles, isolation, versions."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import text

from actors.bots import BotStore
from tenancy.db import Database
from tenancy.tenants import ProvisionedTenant
from tests.conftest import TenantFactory
from tests.e2e.test_gateway import assert_error, bearer


def _bot(name: str = "alpha", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "strategy": "sma_crossover", "symbols": ["BTC-USD"],
                            "params": {"fast": 5, "slow": 20}, "capital": "10000.50",
                            "resources": {"num_cpus": 0.5, "memory_mb": 512}}
    body.update(overrides)
    return body


async def _tenant(make_tenant: TenantFactory) -> tuple[ProvisionedTenant, dict[str, str]]:
    created = await make_tenant(plan="unmetered")
    return created, bearer(created.api_key)


async def _key(http: httpx.AsyncClient, owner: dict[str, str], role: str) -> dict[str, str]:
    r = await http.post("/v1/api-keys", json={"name": role, "role": role}, headers=owner)
    assert r.status_code == 201, r.text
    return bearer(r.json()["key"])


async def test_create_list_get_patch_delete(http: httpx.AsyncClient, db: Database,
                                            make_tenant: TenantFactory) -> None:
    created, owner = await _tenant(make_tenant)
    trader = await _key(http, owner, "trader")
    viewer = await _key(http, owner, "viewer")

    r = await http.post("/v1/bots", json=_bot(), headers=trader)
    assert r.status_code == 201, r.text
    bot = r.json()
    assert bot["name"] == "alpha" and bot["strategy"] == "sma_crossover"
    assert bot["symbols"] == ["BTC-USD"] and bot["status"] == "stopped"
    assert bot["capital"] == "10000.50"  # Decimals are strings
    assert bot["params"] == {"fast": 5, "slow": 20, "quantity": "1", "allow_short": False}
    assert bot["resources"] == {"num_cpus": 0.5, "memory_mb": 512, "num_gpus": 0.0}
    assert bot["account"] == f"bot:{bot['id']}" and bot["version"] == 1
    assert bot["last_error"] is None

    # The paper account opened with the capital, in the same transaction.
    async with db.tenant(created.tenant.id, created.tenant.slug) as uow:
        cash = (await uow.conn.execute(text("SELECT cash FROM accounts WHERE account = :a"),
                                       {"a": bot["account"]})).scalar_one()
        memory = (await uow.conn.execute(text("SELECT memory_bytes FROM bots WHERE id = :i"),
                                         {"i": uuid.UUID(bot["id"])})).scalar_one()
    assert cash == Decimal("10000.50") and memory == 512 * 1024 * 1024

    # Defaults for params and resources.
    r = await http.post("/v1/bots", json={"name": "beta", "strategy": "breakout",
                                          "symbols": ["ETH-USD", "AAPL"], "capital": 500},
                        headers=trader)
    assert r.status_code == 201, r.text
    assert r.json()["resources"] == {"num_cpus": 0.25, "memory_mb": 256, "num_gpus": 0.0}

    listed = (await http.get("/v1/bots", headers=viewer)).json()
    assert [b["name"] for b in listed] == ["alpha", "beta"]
    got = await http.get(f"/v1/bots/{bot['id']}", headers=viewer)
    assert got.status_code == 200 and got.json() == bot

    r = await http.patch(f"/v1/bots/{bot['id']}", headers=trader,
                         json={"name": "alpha-2", "params": {"fast": 7}, "capital": "12000.50",
                               "resources": {"num_cpus": 1}, "version": 1})
    assert r.status_code == 200, r.text
    patched = r.json()
    assert patched["name"] == "alpha-2" and patched["version"] == 2
    assert patched["params"]["fast"] == 7 and patched["params"]["slow"] == 20  # merged
    assert patched["resources"] == {"num_cpus": 1.0, "memory_mb": 512, "num_gpus": 0.0}
    assert patched["capital"] == "12000.50"
    async with db.tenant(created.tenant.id, created.tenant.slug) as uow:
        cash = (await uow.conn.execute(text("SELECT cash FROM accounts WHERE account = :a"),
                                       {"a": bot["account"]})).scalar_one()
    assert cash == Decimal("12000.50")  # moved by the difference

    # A stale version loses.
    assert_error(await http.patch(f"/v1/bots/{bot['id']}", json={"name": "x", "version": 1},
                                  headers=trader), 409, "version_conflict", "version")

    deleted = await http.delete(f"/v1/bots/{bot['id']}", headers=trader)
    assert deleted.status_code == 200 and deleted.json()["name"] == "alpha-2"
    assert_error(await http.get(f"/v1/bots/{bot['id']}", headers=viewer), 404, "not_found")
    assert [b["name"] for b in (await http.get("/v1/bots", headers=viewer)).json()] == ["beta"]


async def test_every_bad_input_is_422_naming_the_field_and_writes_nothing(
        http: httpx.AsyncClient, db: Database, make_tenant: TenantFactory) -> None:
    created, owner = await _tenant(make_tenant)
    cases: list[tuple[dict[str, Any], str]] = [
        (_bot(strategy="no_such_strategy"), "strategy"),
        (_bot(params={"fast": "quick"}), "params.fast"),
        (_bot(params={"fast": 1.5}), "params.fast"),
        (_bot(params={"fast": 30, "slow": 20}), "params.fast"),
        (_bot(params={"fast": 20, "slow": 20}), "params.fast"),
        (_bot(params={"nope": 1}), "params.nope"),
        (_bot(symbols=["btc-usd"]), "symbols"),
        (_bot(symbols=[]), "symbols"),
        (_bot(symbols=["BTC-USD", "BTC-USD"]), "symbols"),
        (_bot(symbols=[f"S{i}" for i in range(51)]), "symbols"),
        (_bot(symbols="BTC-USD"), "symbols"),
        (_bot(symbols=["BTC-USD", "NOPE-USD"]), "symbols"),  # not an instrument of the platform
        (_bot(capital=0), "capital"),
        (_bot(capital="-5"), "capital"),
        (_bot(capital="NaN"), "capital"),
        (_bot(capital="Infinity"), "capital"),
        (_bot(capital="abc"), "capital"),
        (_bot(capital=True), "capital"),
        (_bot(name=""), "name"),
        (_bot(name="x" * 101), "name"),
        (_bot(resources={"num_cpus": 0}), "resources.num_cpus"),
        (_bot(resources={"num_cpus": 17}), "resources.num_cpus"),
        (_bot(resources={"memory_mb": 32}), "resources.memory_mb"),
        (_bot(resources={"memory_mb": 100_000}), "resources.memory_mb"),
        (_bot(resources={"gpus": 1}), "resources.gpus"),
        (_bot(tenant_id=str(created.tenant.id)), "tenant_id"),
        ({k: v for k, v in _bot().items() if k != "capital"}, "capital"),
    ]
    for body, field in cases:
        assert_error(await http.post("/v1/bots", json=body, headers=owner), 422, field=field)
    # A NaN sent as a bare JSON token is refused too.
    raw = '{"name": "n", "strategy": "sma_crossover", "symbols": ["BTC-USD"], "capital": NaN}'
    assert_error(await http.post("/v1/bots", content=raw, headers={
        **owner, "content-type": "application/json"}), 422, field="capital")

    assert (await http.get("/v1/bots", headers=owner)).json() == []
    async with db.tenant(created.tenant.id, created.tenant.slug) as uow:
        accounts = (await uow.conn.execute(text("SELECT count(*) FROM accounts"))).scalar_one()
    assert accounts == 0

    # The same rules hold for a PATCH, which changes nothing when refused.
    bot = (await http.post("/v1/bots", json=_bot(), headers=owner)).json()
    for body, field in [({"params": {"fast": 25}}, "params.fast"), ({"capital": 0}, "capital"),
                        ({"symbols": ["bad symbol"]}, "symbols"), ({"strategy": "breakout"}, "strategy"),
                        ({"name": None}, "name"), ({"owner": "me"}, "owner"),
                        ({"resources": {"memory_mb": 1}}, "resources.memory_mb")]:
        assert_error(await http.patch(f"/v1/bots/{bot['id']}", json=body, headers=owner),
                     422, field=field)
    assert (await http.get(f"/v1/bots/{bot['id']}", headers=owner)).json() == bot


async def test_duplicate_name_is_409(http: httpx.AsyncClient, make_tenant: TenantFactory) -> None:
    _, owner = await _tenant(make_tenant)
    assert (await http.post("/v1/bots", json=_bot("same"), headers=owner)).status_code == 201
    assert_error(await http.post("/v1/bots", json=_bot("same"), headers=owner), 409,
                 "bot_name_taken", "name")
    other = (await http.post("/v1/bots", json=_bot("other"), headers=owner)).json()
    assert_error(await http.patch(f"/v1/bots/{other['id']}", json={"name": "same"}, headers=owner),
                 409, "bot_name_taken", "name")
    # Created at once under one name: exactly one wins.
    results = await asyncio.gather(*(http.post("/v1/bots", json=_bot("race"), headers=owner)
                                     for _ in range(5)))
    assert sorted(r.status_code for r in results) == [201, 409, 409, 409, 409]


async def test_roles(http: httpx.AsyncClient, make_tenant: TenantFactory) -> None:
    _, owner = await _tenant(make_tenant)
    viewer = await _key(http, owner, "viewer")
    assert_error(await http.post("/v1/bots", json=_bot(), headers=viewer), 403, "insufficient_role")
    bot = (await http.post("/v1/bots", json=_bot(), headers=owner)).json()
    assert_error(await http.patch(f"/v1/bots/{bot['id']}", json={"name": "v"}, headers=viewer),
                 403, "insufficient_role")
    assert_error(await http.delete(f"/v1/bots/{bot['id']}", headers=viewer), 403,
                 "insufficient_role")
    assert (await http.get("/v1/bots", headers=viewer)).status_code == 200
    assert_error(await http.get("/v1/bots"), 401)


async def test_another_tenants_bot_is_404(http: httpx.AsyncClient,
                                          make_tenant: TenantFactory) -> None:
    (_, a), (_, b) = await _tenant(make_tenant), await _tenant(make_tenant)
    bot = (await http.post("/v1/bots", json=_bot(), headers=a)).json()
    assert_error(await http.get(f"/v1/bots/{bot['id']}", headers=b), 404, "not_found")
    assert_error(await http.patch(f"/v1/bots/{bot['id']}", json={"name": "mine"}, headers=b),
                 404, "not_found")
    assert_error(await http.delete(f"/v1/bots/{bot['id']}", headers=b), 404, "not_found")
    assert (await http.get("/v1/bots", headers=b)).json() == []
    for ref in ("not-a-uuid", str(uuid.uuid4())):
        assert_error(await http.get(f"/v1/bots/{ref}", headers=a), 404, "not_found")
    # B may use the same name: names are unique per tenant only.
    assert (await http.post("/v1/bots", json=_bot(), headers=b)).status_code == 201
    assert (await http.get(f"/v1/bots/{bot['id']}", headers=a)).json()["name"] == "alpha"


async def test_a_running_bot_cannot_be_changed_or_deleted(http: httpx.AsyncClient, db: Database,
                                                          make_tenant: TenantFactory) -> None:
    created, owner = await _tenant(make_tenant)
    bot = (await http.post("/v1/bots", json=_bot(), headers=owner)).json()
    store = BotStore(db, created.tenant.id, created.tenant.slug)
    running = await store.set_status(bot["id"], "running")
    assert running.status == "running" and running.version == bot["version"] + 1
    assert_error(await http.patch(f"/v1/bots/{bot['id']}", json={"capital": 5}, headers=owner),
                 409, "bot_running")
    assert_error(await http.delete(f"/v1/bots/{bot['id']}", headers=owner), 409, "bot_running")
    got = (await http.get(f"/v1/bots/{bot['id']}", headers=owner)).json()
    assert got["status"] == "running" and got["capital"] == "10000.50"

    failed = await store.set_status(bot["id"], "error", last_error="feed lost")
    assert failed.last_error == "feed lost"
    r = await http.patch(f"/v1/bots/{bot['id']}", json={"capital": 5}, headers=owner)
    assert r.status_code == 200, r.text
    assert r.json()["last_error"] == "feed lost" and r.json()["capital"] == "5"
    assert (await http.delete(f"/v1/bots/{bot['id']}", headers=owner)).status_code == 200


async def test_concurrent_patches_with_one_version_one_wins(http: httpx.AsyncClient,
                                                            make_tenant: TenantFactory) -> None:
    _, owner = await _tenant(make_tenant)
    bot = (await http.post("/v1/bots", json=_bot(), headers=owner)).json()
    results = await asyncio.gather(*(http.patch(f"/v1/bots/{bot['id']}", headers=owner, json={
        "capital": str(100 + i), "version": bot["version"]}) for i in range(4)))
    assert sorted(r.status_code for r in results) == [200, 409, 409, 409]
    assert (await http.get(f"/v1/bots/{bot['id']}", headers=owner)).json()["version"] == 2


async def test_deleting_a_bot_keeps_its_orders(http: httpx.AsyncClient, db: Database,
                                               make_tenant: TenantFactory) -> None:
    from actors.store import TradingStore
    from trading.orders import Order

    created, owner = await _tenant(make_tenant)
    bot = (await http.post("/v1/bots", json=_bot(), headers=owner)).json()
    trading = TradingStore(db, created.tenant.id, created.tenant.slug)
    await trading.submit(Order.new(client_order_id="kept-1", symbol="BTC-USD", side="buy",
                                   quantity="1", bot_id=bot["id"]),
                         account=bot["account"], source="bot", bot_id=uuid.UUID(bot["id"]))
    assert (await http.delete(f"/v1/bots/{bot['id']}", headers=owner)).status_code == 200
    order = (await http.get("/v1/orders/kept-1", headers=owner)).json()
    assert order["bot_id"] is None and order["account"] == bot["account"]


async def test_strategies_are_listed_with_their_params(http: httpx.AsyncClient,
                                                       make_tenant: TenantFactory) -> None:
    _, owner = await _tenant(make_tenant)
    r = await http.get("/v1/strategies", headers=owner)
    assert r.status_code == 200, r.text
    by_name = {s["name"]: s for s in r.json()}
    assert {"sma_crossover", "rsi_mean_reversion", "breakout"} <= set(by_name)
    fast = by_name["sma_crossover"]["params"]["fast"]
    assert (fast["type"], fast["default"], fast["min"], fast["max"]) == ("int", 10, 1, 1000)
    assert by_name["sma_crossover"]["description"]
    assert_error(await http.get("/v1/strategies"), 401)
    spec = (await http.get("/openapi.json")).json()
    for path in ("/v1/bots", "/v1/bots/{bot_id}", "/v1/strategies"):
        assert path in spec["paths"], path
