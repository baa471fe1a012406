"""The platform on a real three-node Ray cluster (separate node processes on this machine).

A head (no CPU, ``atp_system``) and two workers, ``w1`` (shared) and ``w2`` (also
``dedicated_enterprise``), started with `tests.cluster.ray_nodes` beside the test session's
own Ray (explicit ports and temp dirs, their own token). The platform's code runs in a
driver subprocess (`tests.cluster.multinode_driver`) against a database of its own and the
test Redis. Shown: tenant actors spread over both workers, the enterprise tenant's actors
only on ``w2``, the feed on the head; then ``w1`` is killed (SIGKILL of its process group)
and every bot resumes on ``w2``, rebuilt from PostgreSQL by Ray's restart, trading again,
with positions equal to the sum of fills and every order stored once with one creation.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.cluster.ray_nodes import Cluster, ray_cluster
from tests.conftest import REDIS_URL, _url

ROOT = Path(__file__).resolve().parents[2]
SYSTEM = {"atp_system": 0.001}
PHASE_TIMEOUT = 180


async def _admin(sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(_url("postgres"))
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    name = f"atp_multinode_{os.getpid()}"
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield _url(name)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        roles = asyncio.run(_admin("SELECT rolname FROM pg_roles WHERE starts_with(rolname, 'tenant_tmn')"))
        for row in roles:
            try:
                asyncio.run(_admin(f'DROP ROLE IF EXISTS "{row["rolname"]}"'))
            except asyncpg.DependentObjectsStillExistError:
                pass  # another run's, still in use


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with ray_cluster({"w1": (2, {}), "w2": (2, {"dedicated_enterprise": 1000})},
                     head_resources={"atp_system": 100}, env={"PYTHONPATH": str(ROOT)}) as started:
        yield started


def _phase(cluster: Cluster, phase: str, config: dict[str, Any]) -> dict[str, Any]:
    env = {**cluster.env, "RAY_ADDRESS": cluster.address}
    try:
        run = subprocess.run([sys.executable, "-m", "tests.cluster.multinode_driver", phase,
                              json.dumps({**config, "address": cluster.address})],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=PHASE_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"phase {phase} ran over {PHASE_TIMEOUT} s:\n{exc.stderr!s}\n"
                             f"{cluster.tails()}") from None
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, (
        f"phase {phase} failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT "):])
    return result


def _node_of(nodes: dict[str, Any], resource: str) -> str:
    return next(n for n, info in nodes.items() if info["alive"] and resource in info["resources"])


@pytest.mark.cluster
@pytest.mark.timeout(420)  # two phases of at most PHASE_TIMEOUT, plus the cluster start
def test_tenants_spread_survive_a_lost_node_and_enterprise_stays_dedicated(
        cluster: Cluster, database: str, tmp_path: Path) -> None:
    started = time.monotonic()
    config = {"database_url": database, "redis_url": REDIS_URL, "system_resources": SYSTEM,
              "data_dir": str(tmp_path)}
    setup = _phase(cluster, "setup", config)
    nodes, placement = setup["nodes"], setup["placement"]
    head, w2 = _node_of(nodes, "atp_system"), _node_of(nodes, "dedicated_enterprise")
    w1 = next(n for n in nodes if n not in (head, w2))
    assert placement["_feed"] == head  # the system actor asked for atp_system
    tenant_nodes = {a["node"] for k in ("a", "b", "e") for a in placement[k].values()}
    assert tenant_nodes == {w1, w2}, f"tenant actors not spread over both workers: {placement}"
    assert {a["node"] for a in placement["e"].values()} == {w2}
    assert all(a["resources"].get("dedicated_enterprise") == 1 for a in placement["e"].values())
    assert len(placement["e"]) == 3 and len(placement["a"]) == 4 and len(placement["b"]) == 3
    on_w1 = {k: sorted(n for n, a in placement[k].items() if a["node"] == w1) for k in ("a", "b")}
    assert any(on_w1.values())

    cluster.nodes["w1"].kill()
    verify = _phase(cluster, "verify", {**config, "tenants": setup["tenants"],
                                        "placement_before": placement, "fills_before": setup["fills"],
                                        "dead_node": w1})
    after = verify["placement"]
    assert not verify["nodes"][w1]["alive"]
    for key in ("a", "b", "e"):
        assert set(after[key]) == set(placement[key])
        assert {a["node"] for a in after[key].values()} == {w2}, after[key]
        for name in on_w1.get(key, []):
            assert after[key][name]["restarts"] >= 1  # restarted by Ray, not by reconcile
    assert verify["reconciled"] == []
    assert all(verify["fills"][acc] > n for acc, n in setup["fills"].items())  # trading again
    for key, inv in verify["invariants"].items():
        assert inv["orders"] > 0 and inv["orders"] == inv["distinct_client_ids"], (key, inv)
        assert inv["positions_not_sum_of_fills"] == [], (key, inv)
        assert inv["orders_fill_mismatch"] == [], (key, inv)
        assert inv["orders_without_one_creation_event"] == 0, (key, inv)
        assert inv["orders_stuck_new"] == 0, (key, inv)
    assert verify["left_after_stop"] == {"a": [], "b": [], "e": []}
    print(json.dumps({"on_w1_before": on_w1, "fills_before": setup["fills"], "fills_after": verify["fills"],
                      "node_lost_after_s": verify["node_lost_after_s"], "invariants": verify["invariants"],
                      "seconds": round(time.monotonic() - started, 1)}, indent=1))
    assert time.monotonic() - started < 240
