"""Backtests, Tune optimisations and custom strategy packages as real Ray jobs, over HTTP."""

from __future__ import annotations

import asyncio
import io
import re
import time
import zipfile
from typing import Any

import httpx
import pytest

from tenancy.db import Database
from tests.conftest import TenantFactory
from tests.e2e.test_gateway import assert_error, bearer

pytestmark = pytest.mark.timeout(600)

RUN = {"strategy": "sma_crossover", "symbols": ["AAPL"], "from": "2024-01-01T00:00:00Z",
       "to": "2024-01-04T00:00:00Z", "data": {"source": "synthetic", "seed": 7, "interval": "5m"},
       "params": {"fast": 5, "slow": 20}, "capital": "100000", "fee_bps": 5,
       "resources": {"num_cpus": 0.25, "memory_mb": 512}}

CUSTOM = '''
from decimal import Decimal
from trading.strategy import Param, Strategy


class Momentum(Strategy):
    name = "my_momentum"
    description = "Buy after `lookback` rising closes, sell after as many falling ones."
    params = {"lookback": Param(int, 3, min=1, max=50), "quantity": Param(Decimal, Decimal(1))}

    @property
    def warmup(self):
        return self.p.lookback + 1

    def on_bar(self, ctx, bar):
        bars = ctx.history(bar.symbol, self.warmup)
        if len(bars) < self.warmup or ctx.open_orders(bar.symbol):
            return
        closes = [b.close for b in bars]
        rising = all(a < b for a, b in zip(closes, closes[1:]))
        falling = all(a > b for a, b in zip(closes, closes[1:]))
        held = ctx.position(bar.symbol)
        if rising and held <= 0:
            ctx.buy(bar.symbol, self.p.quantity)
        elif falling and held > 0:
            ctx.sell(bar.symbol, held)
'''

CRASHING = '''
from trading.strategy import Strategy


class Crashing(Strategy):
    name = "crashing"

    def on_bar(self, ctx, bar):
        raise ZeroDivisionError("tenant code blew up on purpose")
'''


async def _poll(http: httpx.AsyncClient, path: str, headers: dict[str, str], timeout: float = 240
                ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = await http.get(path, headers=headers)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if body["status"] in ("succeeded", "failed", "stopped"):
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(1.0)


async def _tenant(http: httpx.AsyncClient, make_tenant: TenantFactory, plan: str = "unmetered"
                  ) -> tuple[str, dict[str, str]]:
    created = await make_tenant(plan=plan)
    owner = bearer(created.api_key)
    r = await http.post("/v1/api-keys", json={"name": "t", "role": "trader"}, headers=owner)
    assert r.status_code == 201, r.text
    return created.tenant.slug, bearer(r.json()["key"])


async def _trader(http: httpx.AsyncClient, make_tenant: TenantFactory, plan: str = "unmetered"
                  ) -> dict[str, str]:
    return (await _tenant(http, make_tenant, plan))[1]


def _actor_classes(namespace: str) -> set[str]:
    """Classes of the actors that lived in `namespace` (dead ones stay listed for a while)."""
    import ray
    from ray.util.state import list_actors

    return {a.class_name for a in list_actors(
        address=ray.get_runtime_context().gcs_address, detail=True,
        filters=[("ray_namespace", "=", namespace)])}


async def test_backtest_over_http_runs_as_a_ray_job_and_reports(
        http: httpx.AsyncClient, make_tenant: TenantFactory) -> None:
    trader = await _trader(http, make_tenant)
    r = await http.post("/v1/backtests", json=RUN, headers=trader)
    assert r.status_code == 202, r.text
    created = r.json()
    assert created["status"] in ("queued", "running") and created["params"]["slow"] == 20
    done = await _poll(http, f"/v1/backtests/{created['id']}", trader)
    assert done["status"] == "succeeded", done
    assert done["progress"] == 1 and done["bars"] == 864  # 3 days of 5-minute bars
    assert done["trade_count"] > 0 and done["metrics"]["max_drawdown"] >= 0
    assert len(done["equity_curve"]) == 864

    # The job is the tenant's, finished, and its driver log is readable.
    job = (await http.get(f"/v1/jobs/{done['job_id']}", headers=trader)).json()
    assert job["status"] == "succeeded" and job["kind"] == "backtest" and job["backtest_id"] == done["id"]
    logs = await http.get(f"/v1/jobs/{done['job_id']}/logs", headers=trader)
    assert logs.status_code == 200 and "job finished" in logs.text

    # Same data, same engine here: the stored trades are the ones the engine makes.
    from datetime import UTC, datetime, timedelta

    from trading.backtest import run_backtest
    from trading.data import SyntheticSource

    bars = SyntheticSource(seed=7, interval=timedelta(minutes=5)).bars(
        ["AAPL"], datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 4, tzinfo=UTC))
    local = run_backtest("sma_crossover", RUN["params"], bars, capital=100000, fee_bps=5)
    detail = (await http.get(f"/v1/backtests/{done['id']}?trades=true", headers=trader)).json()
    assert [(t["side"], t["price"]) for t in detail["trades"]] == \
        [(f.side.value, str(f.price)) for f in local.fills]
    assert done["final_equity"] == str(local.final_equity)

    report = await http.get(f"/v1/backtests/{done['id']}/report", headers=trader)
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert "<svg" in report.text and "Drawdown" in report.text and "sma_crossover" in report.text

    listed = (await http.get("/v1/backtests", headers=trader)).json()
    assert [b["id"] for b in listed] == [done["id"]]


async def test_bad_backtests_are_refused_before_anything_runs(
        http: httpx.AsyncClient, make_tenant: TenantFactory) -> None:
    trader = await _trader(http, make_tenant)
    bad = [({**RUN, "params": {"fast": "ten"}}, "params.fast"),
           ({**RUN, "params": {"fast": 30, "slow": 20}}, "params.fast"),
           ({**RUN, "strategy": "nope"}, "strategy"),
           ({**RUN, "to": "2023-01-01T00:00:00Z"}, "to"),
           ({**RUN, "data": {"source": "synthetic", "interval": "1m"}, "to": "2030-01-01T00:00:00Z"}, "to"),
           ({**RUN, "resources": {"num_cpus": -1}}, "resources.num_cpus"),
           ({**RUN, "tenant_id": "x"}, "tenant_id")]
    for body, field in bad:
        r = await http.post("/v1/backtests", json=body, headers=trader)
        assert_error(r, 422, "invalid", field=field)
    assert (await http.get("/v1/jobs", headers=trader)).json() == []


async def test_a_job_over_the_plan_is_refused_with_quota_exceeded(
        http: httpx.AsyncClient, make_tenant: TenantFactory) -> None:
    trader = await _trader(http, make_tenant, plan="starter")  # 1 CPU, 2 GiB
    r = await http.post("/v1/backtests", json={**RUN, "resources": {"num_cpus": 2}}, headers=trader)
    assert_error(r, 403, "quota_exceeded", field="cpu")
    r = await http.post("/v1/optimizations", headers=trader, json={
        **RUN, "params": {}, "search_space": {"fast": {"type": "int", "low": 2, "high": 8}}, "concurrency": 4,
        "cpus_per_trial": 0.5})
    assert_error(r, 403, "quota_exceeded", field="cpu")
    assert (await http.get("/v1/jobs", headers=trader)).json() == []


async def test_optimization_with_tune_splits_in_and_out_of_sample_and_applies_to_a_bot(
        http: httpx.AsyncClient, db: Database, make_tenant: TenantFactory) -> None:
    slug, trader = await _tenant(http, make_tenant)
    body = {**RUN, "params": {"quantity": 2}, "to": "2024-01-08T00:00:00Z",
            "search_space": {"fast": {"type": "int", "low": 3, "high": 8},
                             "slow": {"type": "choice", "values": [20, 30, 40]}},
            "objective": "return", "in_sample": 0.7, "num_trials": 4, "concurrency": 2,
            "cpus_per_trial": 0.25, "memory_per_trial_mb": 256, "seed": 3}
    r = await http.post("/v1/optimizations", json=body, headers=trader)
    assert r.status_code == 202, r.text
    created = r.json()
    assert created["split_at"].startswith("2024-01-05T21:36")  # 70 % of 7 days: 4.9 days
    assert created["fixed_params"] == {"quantity": "2", "allow_short": False}
    done = await _poll(http, f"/v1/optimizations/{created['id']}", trader, timeout=400)
    # The trials were actors of the tenant's namespace (admitted and metered as the tenant's).
    assert "ImplicitFunc" in await asyncio.to_thread(_actor_classes, f"tenant-{slug}")
    assert done["status"] == "succeeded", done
    assert done["trials_done"] == 4 and len(done["trials"]) == 4
    assert all(3 <= t["params"]["fast"] <= 8 and t["params"]["slow"] in (20, 30, 40) for t in done["trials"])
    best = max((t for t in done["trials"] if t["status"] == "succeeded"), key=lambda t: t["objective"])
    assert done["best_params"]["fast"] == best["params"]["fast"]
    assert done["best_params"]["quantity"] == "2"
    assert done["in_sample"]["objective"] == pytest.approx(best["objective"])
    assert done["out_of_sample"]["metrics"] is not None  # judged on bars no trial saw

    r = await http.post("/v1/bots", headers=trader, json={
        "name": "tuned", "strategy": "sma_crossover", "symbols": ["AAPL"], "capital": "1000"})
    bot = r.json()
    r = await http.post(f"/v1/optimizations/{done['id']}/apply", json={"bot_id": bot["id"]}, headers=trader)
    assert r.status_code == 200, r.text
    assert r.json()["params"]["fast"] == best["params"]["fast"]
    assert r.json()["params"]["slow"] == best["params"]["slow"]


async def test_bad_search_spaces_are_refused(http: httpx.AsyncClient, make_tenant: TenantFactory) -> None:
    trader = await _trader(http, make_tenant)
    cases = [({"fast": {"type": "int", "low": 3, "high": 5}, "nope": {}}, "search_space.nope"),
             ({"nope": {"type": "int", "low": 1, "high": 2}}, "search_space.nope"),
             ({"fast": {"type": "float", "low": 1, "high": 2}}, "search_space.fast.type"),
             ({"fast": {"type": "int", "low": 0, "high": 5}}, "search_space.fast.low"),
             ({"fast": {"type": "int", "low": 9, "high": 5}}, "search_space.fast.low"),
             ({"allow_short": {"type": "choice", "values": [1]}}, "search_space.allow_short.values")]
    for space, field in cases:
        r = await http.post("/v1/optimizations", json={**RUN, "params": {}, "search_space": space},
                            headers=trader)
        assert_error(r, 422, "invalid", field=field)


async def test_uploads_are_checked_without_running_them(
        http: httpx.AsyncClient, make_tenant: TenantFactory) -> None:
    trader = await _trader(http, make_tenant)
    put = "/v1/strategy-packages/{}?filename={}"
    r = await http.put(put.format("broken", "broken.py"), content=b"class X(:\n", headers=trader)
    assert_error(r, 422, "invalid", field="file")
    assert "line 1" in r.json()["error"]["message"]
    r = await http.put(put.format("none", "none.py"), content=b"class X:\n    pass\n", headers=trader)
    assert_error(r, 422, "invalid", field="file")
    r = await http.put(put.format("shadow", "s.py"), headers=trader,
                       content=b"from trading.strategy import Strategy\nclass S(Strategy):\n"
                               b"    name = 'sma_crossover'\n")
    assert_error(r, 422, "invalid", field="file")
    r = await http.put(put.format("big", "big.py"), content=b"#" * (1024 * 1024 + 1), headers=trader)
    assert_error(r, 400, "bad_payload", field="body")
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../escape.py", CUSTOM)
    r = await http.put(put.format("evil", "evil.zip"), content=evil.getvalue(), headers=trader)
    assert_error(r, 422, "invalid", field="file")
    # It parses, but importing it fails: the inspect job says why, and nothing is stored.
    r = await http.put(put.format("missing", "missing.py"), headers=trader,
                       content=b"import no_such_module_anywhere\n" + CUSTOM.encode())
    assert_error(r, 422, "invalid", field="file")
    assert "ModuleNotFoundError" in r.json()["error"]["message"]
    assert (await http.get("/v1/strategy-packages", headers=trader)).json() == []


async def test_custom_strategy_package_runs_as_a_job_and_a_crash_fails_with_its_log(
        http: httpx.AsyncClient, make_tenant: TenantFactory) -> None:
    trader = await _trader(http, make_tenant)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("mine/__init__.py", "")
        archive.writestr("mine/momentum.py", CUSTOM)
    r = await http.put("/v1/strategy-packages/mine?filename=mine.zip", content=zipped.getvalue(),
                       headers=trader)
    assert r.status_code == 200, r.text
    (found,) = r.json()["strategies"]  # described by a job that imported the package
    assert (found["module"], found["class_name"], found["name"]) == \
        ("mine.momentum", "Momentum", "my_momentum")
    assert found["params"]["lookback"] == {"type": "int", "default": 3, "min": 1, "max": 50,
                                           "min_exclusive": False, "choices": None, "description": ""}
    assert found["description"].startswith("Buy after")

    job_body = {**RUN, "kind": "backtest", "package": "mine", "strategy": "my_momentum",
                "params": {"lookback": 4}}
    r = await http.post("/v1/jobs", json=job_body, headers=trader)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["package"] == "mine" and job["submission_id"] == f"atp-{job['id']}"
    done = await _poll(http, f"/v1/jobs/{job['id']}", trader)
    assert done["status"] == "succeeded", done
    result = (await http.get(f"/v1/backtests/{done['backtest_id']}", headers=trader)).json()
    assert result["strategy"] == "my_momentum" and result["params"] == {"lookback": 4, "quantity": "1"}
    assert result["trade_count"] > 0

    # Parameters outside their declared types or bounds: refused before anything runs.
    for params, field in (({"lookback": "many"}, "params.lookback"), ({"lookback": 99}, "params.lookback"),
                          ({"nope": 1}, "params.nope")):
        r = await http.post("/v1/jobs", json={**job_body, "params": params}, headers=trader)
        assert_error(r, 422, "invalid", field=field)
    r = await http.post("/v1/jobs", headers=trader, json={
        **job_body, "kind": "optimization", "params": {},
        "search_space": {"lookback": {"type": "int", "low": 0, "high": 5}}})
    assert_error(r, 422, "invalid", field="search_space.lookback.low")

    r = await http.put("/v1/strategy-packages/crash?filename=crash.py", content=CRASHING.encode(),
                       headers=trader)
    assert r.status_code == 200, r.text
    r = await http.post("/v1/jobs", headers=trader,
                        json={**job_body, "package": "crash", "strategy": "crashing", "params": {}})
    crashed = await _poll(http, f"/v1/jobs/{r.json()['id']}", trader)
    assert crashed["status"] == "failed"
    assert "ZeroDivisionError: tenant code blew up on purpose" in crashed["message"]
    assert 'in on_bar' in crashed["message"]  # the last lines of the traceback
    r = await http.post(f"/v1/jobs/{crashed['id']}/stop", headers=trader)
    assert_error(r, 409, "job_finished")


async def test_job_events_need_the_jobs_own_token(
        http: httpx.AsyncClient, make_tenant: TenantFactory) -> None:
    trader = await _trader(http, make_tenant)
    r = await http.post("/v1/backtests", json=RUN, headers=trader)
    job_id = r.json()["job_id"]
    r = await http.post(f"/v1/jobs/{job_id}/events", json={"type": "failed", "message": "x"},
                        headers=trader)
    assert_error(r, 403, "job_token_required")
    await _poll(http, f"/v1/jobs/{job_id}", trader)


async def test_a_running_job_can_be_stopped(http: httpx.AsyncClient, make_tenant: TenantFactory) -> None:
    trader = await _trader(http, make_tenant)
    long = {**RUN, "to": "2024-03-01T00:00:00Z", "data": {"source": "synthetic", "interval": "1m"}}
    r = await http.post("/v1/backtests", json=long, headers=trader)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    r = await http.post(f"/v1/jobs/{job_id}/stop", headers=trader)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "stopped" and r.json()["message"].startswith("stopped by api_key:")
    backtest = (await http.get(f"/v1/backtests/{r.json()['backtest_id']}", headers=trader)).json()
    assert backtest["status"] == "stopped"
    from actors.jobs import RayJobs

    deadline = time.monotonic() + 60
    while (await RayJobs().status(f"atp-{job_id}") or ("",))[0] not in ("STOPPED", "FAILED"):
        assert time.monotonic() < deadline
        await asyncio.sleep(1)


async def test_cli_submits_a_strategy_file_as_a_job_and_follows_it(
        http: httpx.AsyncClient, gateway_url: str, make_tenant: TenantFactory, tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    trader = await _trader(http, make_tenant)
    script = tmp_path / "my_momentum.py"
    script.write_text(CUSTOM)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATP_")}
    env.update({"ATP_URL": gateway_url, "ATP_API_KEY": trader["Authorization"].split()[1], "COLUMNS": "200"})

    def atp(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "serve.cli", *args], env=env, capture_output=True,
                              text=True, timeout=300)

    done = await asyncio.to_thread(
        atp, "job", "submit", str(script), "--strategy", "my_momentum", "--symbol", "AAPL",
        "--from", "2024-01-01", "--to", "2024-01-03", "--interval", "5m", "--param", "lookback=3",
        "--cpus", "0.25")
    assert done.returncode == 0, done.stderr
    assert "package my_momentum" in done.stdout and ": succeeded" in done.stdout
    assert "total_return" in done.stdout
    job_id = re.search(r"job ([0-9a-f-]{36})", done.stdout).group(1)  # type: ignore[union-attr]
    logs = await asyncio.to_thread(atp, "job", "logs", job_id, "--tail", "5")
    assert logs.returncode == 0 and "job finished" in logs.stdout

    bad = await asyncio.to_thread(
        atp, "job", "submit", str(script), "--strategy", "nope", "--symbol", "AAPL",
        "--from", "2024-01-01", "--to", "2024-01-03")
    assert bad.returncode == 2 and "invalid value for --strategy" in bad.stderr

    optimized = await asyncio.to_thread(
        atp, "optimize", "--strategy", "sma_crossover", "--symbol", "AAPL", "--from", "2024-01-01",
        "--to", "2024-01-04", "--interval", "5m", "--search", "fast=int:3:6", "--search",
        "slow=choice:20,30", "--trials", "2", "--concurrency", "2", "--cpus-per-trial", "0.25",
        "--objective", "return")
    assert optimized.returncode == 0, optimized.stderr
    assert "best parameters" in optimized.stdout and "out-of-sample" in optimized.stdout


async def test_suspension_stops_a_tenants_unfinished_jobs(
        http: httpx.AsyncClient, db: Database, make_tenant: TenantFactory) -> None:
    from actors.jobs import RayJobs
    from actors.research import ResearchStore, stop_unfinished_jobs

    created = await make_tenant(plan="unmetered")
    owner = bearer(created.api_key)
    long = {**RUN, "to": "2024-03-01T00:00:00Z", "data": {"source": "synthetic", "interval": "1m"}}
    r = await http.post("/v1/backtests", json=long, headers=owner)
    assert r.status_code == 202, r.text
    store = ResearchStore(db, created.tenant.id, created.tenant.slug)
    assert await stop_unfinished_jobs(store, RayJobs(), "suspended: test") == 1
    job = await store.job(r.json()["job_id"])
    assert job["status"] == "stopped" and job["message"] == "suspended: test"
    assert await stop_unfinished_jobs(store, RayJobs(), "again") == 0


async def test_openapi_describes_the_research_bodies(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    body = spec["paths"]["/v1/optimizations"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"strategy", "symbols", "from", "to", "search_space", "objective"} <= set(body["properties"])
    assert set(body["required"]) >= {"strategy", "symbols", "from", "to", "search_space"}
    jobs = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "kind" in jobs["required"] and "package" in jobs["required"]
    assert "/v1/jobs/{job_id}/events" not in spec["paths"]  # the jobs' own channel is not public API
    for path in ("/v1/backtests", "/v1/backtests/{backtest_id}/report", "/v1/strategy-packages/{name}",
                 "/v1/jobs/{job_id}/logs", "/v1/optimizations/{optimization_id}/apply"):
        assert path in spec["paths"], path
