"""Tenant models end to end: train as a Ray job (with a Tune search), registry, multiplexed predict."""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import ray
from sqlalchemy import text

from actors.feed import get_or_create_feed
from actors.market import upsert_instruments, write_bars
from actors.research import FINISHED
from tenancy.db import Database
from tenancy.settings import Settings
from tests.conftest import TenantFactory
from tests.e2e.test_gateway import assert_error, bearer
from trading.backtest import default_instrument
from trading.data import SyntheticSource

pytestmark = pytest.mark.timeout(600)

SYMBOL = "MODELX"
TRAIN = {"name": "trend", "architecture": "mlp", "symbol": SYMBOL, "from": "2024-01-01T00:00:00Z",
         "to": "2024-01-06T00:00:00Z", "data": {"source": "synthetic", "seed": 11, "interval": "5m"},
         "hyper": {"hidden": [16], "dropout": 0.0}, "lookback": 8,
         "features": {"features": ["log_return", "rsi", "volume_z"], "return_horizons": [1, 3]},
         "label": {"kind": "direction", "horizon": 3},
         "training": {"epochs": 3, "batch_size": 64, "lr": 0.003, "patience": 2},
         "resources": {"num_cpus": 0.25, "memory_mb": 1024}}


async def _ready(http: httpx.AsyncClient, key: dict[str, str], name: str, version: int) -> dict[str, Any]:
    deadline = time.monotonic() + 400
    while True:
        r = await http.get(f"/v1/models/{name}/versions/{version}", headers=key)
        assert r.status_code == 200, r.text
        found: dict[str, Any] = r.json()
        if found["status"] != "training":
            return found
        assert time.monotonic() < deadline, found
        await asyncio.sleep(1)


async def test_train_search_promote_and_predict(http: httpx.AsyncClient, db: Database,
                                                make_tenant: TenantFactory) -> None:
    created = await make_tenant(plan="unmetered")
    key = bearer(created.api_key)
    body = {**TRAIN, "search_space": {"lr": {"type": "log_float", "low": 0.001, "high": 0.01},
                                      "hidden": {"type": "choice", "values": [[8], [16]]}},
            "num_trials": 2, "concurrency": 2, "cpus_per_trial": 0.25, "memory_per_trial_mb": 512}
    r = await http.post("/v1/models", json=body, headers=key)
    assert r.status_code == 202, r.text
    assert (r.json()["version"], r.json()["status"]) == (1, "training")
    done = await _ready(http, key, "trend", 1)
    assert done["status"] == "ready", done.get("error")
    assert {"loss", "accuracy", "auc"} <= set(done["metrics"])
    assert len(done["params"]["trials"]) == 2 and done["params"]["searched"]["hidden"] in ([8], [16])
    assert done["backtest"]["bars"] > 0 and "final_equity" in done["backtest"]
    assert len(done["artifact_sha256"]) == 64 and done["size_bytes"] > 0

    # Stored encrypted: the plain artifact (a torch zip) is not in the row.
    async with db.tenant(created.tenant.id, created.tenant.slug) as uow:
        stored = (await uow.conn.execute(text("SELECT artifact FROM model_versions"))).scalar_one()
    assert not bytes(stored).startswith(b"PK")

    r = await http.post("/v1/models/trend/predict", json={"symbol": SYMBOL}, headers=key)
    assert_error(r, 404, "model_not_promoted")
    r = await http.post("/v1/models/trend/versions/1/promote", json={"stage": "production"}, headers=key)
    assert r.status_code == 200 and r.json()["stage"] == "production", r.text
    listed = (await http.get("/v1/models", headers=key)).json()
    assert [(m["name"], m["production"]) for m in listed] == [("trend", 1)]

    # Predict from stored bars of the symbol (the feature windows are built by the gateway).
    start = datetime(2024, 2, 1, tzinfo=UTC)
    bars = list(SyntheticSource(seed=11, interval=timedelta(minutes=5)).bars([SYMBOL], start,
                                                                              start + timedelta(hours=8)))
    await upsert_instruments(db, [default_instrument(SYMBOL)])
    await write_bars(db, bars)
    r = await http.post("/v1/models/trend/predict", json={"symbol": SYMBOL, "at": "2024-02-01T08:00:00Z"},
                        headers=key)
    assert r.status_code == 200, r.text
    (p,) = r.json()["predictions"]
    assert 0.0 <= p <= 1.0 and r.json()["version"] == 1
    # Windows given directly: lookback 8 rows of 4 features (2 returns, rsi, volume z).
    r = await http.post("/v1/models/trend/predict", json={"windows": [[[0.0, 0.0, 50.0, 0.0]] * 8] * 3},
                        headers=key)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 3, r.text

    # Another tenant cannot reach this model: its own namespace of names.
    other = bearer((await make_tenant(plan="unmetered")).api_key)
    r = await http.post("/v1/models/trend/predict", json={"symbol": SYMBOL}, headers=other)
    assert_error(r, 404, "model_not_found")


async def test_bad_training_requests_are_refused(http: httpx.AsyncClient, make_tenant: TenantFactory) -> None:
    key = bearer((await make_tenant(plan="unmetered")).api_key)
    cases = [({**TRAIN, "architecture": "transformer"}, "architecture"),
             ({**TRAIN, "features": {"features": ["astrology"]}}, "features"),
             ({**TRAIN, "to": "2024-01-01T02:00:00Z"}, "to"),
             ({**TRAIN, "label": {"kind": "colour"}}, "label.kind"),
             ({**TRAIN, "hyper": {"layers": 3}}, "layers"),
             ({**TRAIN, "search_space": {"lr": {"type": "float", "low": 5, "high": 6}}},
              "search_space.lr.low"),
             ({**TRAIN, "name": "Bad Name"}, "name")]
    for body, field in cases:
        r = await http.post("/v1/models", json=body, headers=key)
        assert_error(r, 422, "invalid", field=field)
    assert (await http.get("/v1/models", headers=key)).json() == []


async def test_a_corrupt_artifact_is_refused_and_marked_bad(http: httpx.AsyncClient, db: Database,
                                                            make_tenant: TenantFactory) -> None:
    created = await make_tenant(plan="unmetered")
    key = bearer(created.api_key)
    r = await http.post("/v1/models", json={**TRAIN, "name": "fragile"}, headers=key)
    assert r.status_code == 202, r.text
    assert (await _ready(http, key, "fragile", 1))["status"] == "ready"
    async with db.tenant(created.tenant.id, created.tenant.slug) as uow:  # the checksum no longer matches
        await uow.conn.execute(text("UPDATE model_versions SET artifact_sha256 = repeat('0', 64)"))
        await uow.commit()
    r = await http.post("/v1/models/fragile/predict", json={"windows": [[[0.0] * 4] * 8], "version": 1},
                        headers=key)
    assert_error(r, 409, "model_corrupt")
    found = (await http.get("/v1/models/fragile/versions/1", headers=key)).json()
    assert found["status"] == "bad" and "checksum" in found["error"]
    r = await http.post("/v1/models/fragile/versions/1/promote", json={}, headers=key)
    assert_error(r, 409, "model_not_ready")


async def test_a_bot_and_a_backtest_trade_on_the_model(http: httpx.AsyncClient, db: Database,
                                                      settings: Settings, make_tenant: TenantFactory) -> None:
    """The "done when" of tenant models: a bot trades on the model's predictions, live, and a
    backtest of the same strategy scores its bars in-process."""
    created = await make_tenant(plan="unmetered")
    key, tenant = bearer(created.api_key), created.tenant
    await upsert_instruments(db, [default_instrument(SYMBOL)])
    bot = {"name": "on-model", "strategy": "model_signal", "symbols": [SYMBOL], "capital": "100000",
           "params": {"model": "trend", "enter": 0.0001, "exit": 0.00005},  # buys at its first score
           "resources": {"num_cpus": 0.1, "memory_mb": 256}}
    r = await http.post("/v1/bots", json=bot, headers=key)
    assert_error(r, 422, "invalid", field="params.model")  # no such model yet

    r = await http.post("/v1/models", json=TRAIN, headers=key)
    assert r.status_code == 202, r.text
    assert (await _ready(http, key, "trend", 1))["status"] == "ready"
    r = await http.post("/v1/bots", json=bot, headers=key)
    assert_error(r, 422, "invalid", field="params.version")  # trained, not promoted: no production version
    r = await http.post("/v1/models/trend/versions/1/promote", json={"stage": "production"}, headers=key)
    assert r.status_code == 200, r.text

    # The artifact: for traders and the tenant's jobs; another tenant has no such model.
    r = await http.get("/v1/models/trend/versions/1/artifact", headers=key)
    assert r.status_code == 200 and r.content.startswith(b"PK"), r.text[:200]
    assert hashlib.sha256(r.content).hexdigest() == r.headers["x-artifact-sha256"]
    other = bearer((await make_tenant(plan="unmetered")).api_key)
    r = await http.get("/v1/models/trend/versions/1/artifact", headers=other)
    assert_error(r, 404, "model_not_found")

    # A backtest of model_signal: version 0 is fixed to the production version at submission,
    # the job fetches the artifact with its token and scores every bar in-process.
    r = await http.post("/v1/backtests", headers=key, json={
        "strategy": "model_signal", "symbols": [SYMBOL],
        "params": {"model": "trend", "enter": 0.5, "exit": 0.5 - 1e-6},
        "from": "2024-01-06T00:00:00Z", "to": "2024-01-08T00:00:00Z",
        "data": {"source": "synthetic", "seed": 12, "interval": "5m"}, "capital": "100000",
        "resources": {"num_cpus": 0.25, "memory_mb": 1024}})
    assert r.status_code == 202, r.text
    done = await _finished(http, key, f"/v1/backtests/{r.json()['id']}")
    assert done["status"] == "succeeded", done
    assert done["params"]["version"] == 1 and done["trade_count"] > 0, done

    # A live bot: the store holds recent bars (its model's window is preloaded from them),
    # the feed brings new ones, the strategy actor asks the endpoint at each and buys.
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    history = list(SyntheticSource(seed=13, interval=timedelta(minutes=1)).bars(
        [SYMBOL], now - timedelta(minutes=120), now - timedelta(minutes=1)))
    await write_bars(db, history)
    feed = get_or_create_feed(settings)  # before the start: a starting bot subscribes to it
    created_bot = (await http.post("/v1/bots", json=bot, headers=key)).json()
    r = await http.post(f"/v1/bots/{created_bot['id']}/start", headers=key)
    assert r.status_code == 200 and r.json()["status"] == "running", r.text
    live = list(SyntheticSource(seed=14, interval=timedelta(minutes=1)).bars(
        [SYMBOL], now, now + timedelta(minutes=30)))

    async def bought() -> bool:
        orders = (await http.get("/v1/orders", params={"bot_id": created_bot["id"]}, headers=key)).json()
        return any(o["side"] == "buy" and o["status"] == "filled" for o in orders)

    for bar in live:  # a bar at a time until the buy decided on one has filled at a later one
        await feed.publish.remote([bar])
        if await bought():
            break
        await asyncio.sleep(0.5)
    actor = ray.get_actor(f"strategy-{created_bot['id']}", namespace=f"tenant-{tenant.slug}")
    status = await actor.status.remote()
    assert await bought(), status
    assert status["model"] == {"name": "trend", "version": 1} and status["error"] is None
    assert any("model trend scored" in line for line in status["logs"]), status["logs"]
    stopped = await http.post(f"/v1/bots/{created_bot['id']}/stop", headers=key)
    assert stopped.json()["status"] == "stopped"
    assert stopped.json()["capital"] == "100000"  # fixed-point, never "1.0E+5"

    # Without `at`, a prediction reads the symbol's latest stored bars (here: the fed ones).
    r = await http.post("/v1/models/trend/predict", json={"symbol": SYMBOL}, headers=key)
    assert r.status_code == 200, r.text
    latest = (await http.get("/v1/market/bars", params={"symbol": SYMBOL, "limit": 1}, headers=key)).json()
    assert r.json()["at"] == datetime.fromisoformat(latest[-1]["ts"].replace("Z", "+00:00")).isoformat()


async def _finished(http: httpx.AsyncClient, key: dict[str, str], path: str) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while True:
        found: dict[str, Any] = (await http.get(path, headers=key)).json()
        if found["status"] in FINISHED:
            return found
        assert time.monotonic() < deadline, found
        await asyncio.sleep(1)


async def test_the_demo_trains_its_model_and_says_how_to_trade_on_it(
        http: httpx.AsyncClient, gateway_url: str, make_tenant: TenantFactory,
        capsys: pytest.CaptureFixture[str]) -> None:
    from serve.cli import _demo_model

    created = await make_tenant(plan="professional")
    await _demo_model(created.api_key, gateway_url)
    printed = capsys.readouterr().out
    assert "model demo_trend (version 1) is training now" in printed, printed
    key = bearer(created.api_key)
    done = await _ready(http, key, "demo_trend", 1)
    assert done["status"] == "ready", done.get("error")
    assert done["backtest"]["bars"] > 0
    await _demo_model(created.api_key, gateway_url)  # a second run trains nothing more
    assert "(version 1) is ready" in capsys.readouterr().out
    assert len((await http.get("/v1/models/demo_trend/versions", headers=key)).json()) == 1
