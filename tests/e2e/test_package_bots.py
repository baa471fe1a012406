"""A live bot from uploaded strategy code: a Ray job whose actor trades through risk and execution."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from actors.feed import get_or_create_feed
from tenancy.settings import Settings
from tests.conftest import TenantFactory, wait_for
from tests.e2e.test_bot_runtime import _alive, _bars, bearer
from tests.e2e.test_gateway import assert_error
from tests.e2e.test_research import CRASHING, CUSTOM

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def feed(gateway_url: str, settings: Settings) -> Any:
    return get_or_create_feed(settings)


def _bot(**overrides: Any) -> dict[str, Any]:
    body = {"name": "mine", "strategy": "my_momentum", "package": "live", "symbols": ["BTC-USD"],
            "params": {"lookback": 2, "quantity": "0.5"}, "capital": "100000",
            "resources": {"num_cpus": 0.1, "memory_mb": 256}}
    body.update(overrides)
    return body


async def _status(http: httpx.AsyncClient, bot_id: str, key: str) -> dict[str, Any]:
    r = await http.get(f"/v1/bots/{bot_id}", headers=bearer(key))
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


async def test_a_package_bot_trades_as_a_job_and_stops(
        http: httpx.AsyncClient, feed: Any, make_tenant: TenantFactory) -> None:
    created = await make_tenant(plan="unmetered")
    key, slug = created.api_key, created.tenant.slug
    r = await http.post("/v1/bots", json=_bot(), headers=bearer(key))
    assert_error(r, 422, "invalid", field="package")  # not uploaded yet
    r = await http.put("/v1/strategy-packages/live?filename=live.py", content=CUSTOM.encode(),
                       headers=bearer(key))
    assert r.status_code == 200, r.text
    r = await http.post("/v1/bots", json=_bot(strategy="other"), headers=bearer(key))
    assert_error(r, 422, "invalid", field="strategy")
    r = await http.post("/v1/bots", json=_bot(), headers=bearer(key))
    assert r.status_code == 201, r.text
    bot = r.json()
    assert bot["package"] == "live" and bot["params"] == {"lookback": 2, "quantity": "0.5"}

    r = await http.post(f"/v1/bots/{bot['id']}/start", headers=bearer(key))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "starting"

    async def running() -> bool:
        return (await _status(http, bot["id"], key))["status"] == "running"

    await wait_for(running, timeout=120, interval=0.5)
    assert _alive(slug) == {"risk", "execution", f"strategy-{bot['id']}"}

    start = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(days=5)
    closes = [60_000, 59_800, 59_600, 59_900, 60_600, 61_300, 61_000, 60_000, 59_000]
    for bar in _bars(start, closes):
        await feed.publish.remote([bar])
        await asyncio.sleep(0.15)

    async def traded() -> bool:
        orders = (await http.get("/v1/orders", params={"bot_id": bot["id"]}, headers=bearer(key))).json()
        return sum(o["status"] == "filled" for o in orders) >= 2

    await wait_for(traded, timeout=30, interval=0.3)
    orders = (await http.get("/v1/orders", params={"bot_id": bot["id"]}, headers=bearer(key))).json()
    assert [o["side"] for o in sorted(orders, key=lambda o: o["created_at"])][:2] == ["buy", "sell"]

    r = await http.post(f"/v1/bots/{bot['id']}/stop", headers=bearer(key))
    assert r.status_code == 200 and r.json()["status"] == "stopped", r.text
    jobs = (await http.get("/v1/jobs", headers=bearer(key))).json()
    assert [(j["kind"], j["status"], j["bot_id"]) for j in jobs] == [
        ("bot", "stopped", bot["id"]), ("inspect", "succeeded", None)]  # newest first

    async def gone() -> bool:
        return _alive(slug) == set()

    await wait_for(gone, timeout=30, interval=0.5)


async def test_a_package_bot_refuses_bad_parameters_and_a_crash_ends_in_error(
        http: httpx.AsyncClient, feed: Any, make_tenant: TenantFactory) -> None:
    created = await make_tenant(plan="unmetered")
    key = created.api_key
    r = await http.put("/v1/strategy-packages/live?filename=live.py", content=CUSTOM.encode(),
                       headers=bearer(key))
    assert r.status_code == 200, r.text
    r = await http.post("/v1/bots", json=_bot(params={"lookback": "many"}), headers=bearer(key))
    assert_error(r, 422, "invalid", field="params.lookback")

    r = await http.put("/v1/strategy-packages/crash?filename=crash.py", content=CRASHING.encode(),
                       headers=bearer(key))
    assert r.status_code == 200, r.text
    bot = (await http.post("/v1/bots", json=_bot(strategy="crashing", package="crash", params={}),
                           headers=bearer(key))).json()
    r = await http.post(f"/v1/bots/{bot['id']}/start", headers=bearer(key))
    assert r.status_code == 200, r.text

    async def running() -> bool:
        return (await _status(http, bot["id"], key))["status"] == "running"

    await wait_for(running, timeout=120, interval=0.5)
    start = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(days=6)
    await feed.publish.remote(_bars(start, [60_000]))

    async def failed() -> bool:
        return (await _status(http, bot["id"], key))["status"] == "error"

    await wait_for(failed, timeout=60, interval=0.5)
    found = await _status(http, bot["id"], key)
    assert "ZeroDivisionError" in found["last_error"]
    jobs = (await http.get("/v1/jobs", headers=bearer(key))).json()
    assert [j["status"] for j in jobs if j["kind"] == "bot"] == ["failed"]


async def test_package_bots_count_against_the_plans_bots(
        http: httpx.AsyncClient, feed: Any, make_tenant: TenantFactory) -> None:
    created = await make_tenant(plan="starter")  # one bot
    key = created.api_key
    r = await http.put("/v1/strategy-packages/live?filename=live.py", content=CUSTOM.encode(),
                       headers=bearer(key))
    assert r.status_code == 200, r.text
    first = (await http.post("/v1/bots", json=_bot(), headers=bearer(key))).json()
    second = (await http.post("/v1/bots", json=_bot(name="two"), headers=bearer(key))).json()
    r = await http.post(f"/v1/bots/{first['id']}/start", headers=bearer(key))
    assert r.status_code == 200, r.text
    r = await http.post(f"/v1/bots/{second['id']}/start", headers=bearer(key))
    assert_error(r, 403, "quota_exceeded", field="bots")
    assert (await _status(http, second["id"], key))["status"] == "stopped"
    r = await http.post(f"/v1/bots/{first['id']}/stop", headers=bearer(key))
    assert r.status_code == 200, r.text
