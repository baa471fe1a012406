"""Shared set-up for benchmark scripts: a fresh database, Ray, load generation."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def bench_database_url(name: str) -> str:
    base = os.environ.get("ATP_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    parts = urllib.parse.urlsplit(base)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


async def recreate_database(url: str, role_prefix: str) -> None:
    """Drop and create the database, and drop tenant roles named `role_prefix`*."""
    parts = urllib.parse.urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
        # Tenant roles are cluster-wide: drop the ones a previous run left.
        for (role,) in await conn.fetch(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", role_prefix):
            try:
                await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
            except asyncpg.DependentObjectsStillExistError:
                pass  # in use by another database
    finally:
        await conn.close()


@dataclass
class Load:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    non_2xx: int


_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    assert m, text
    return float(m.group(1)) * _UNIT[m.group(2)]


def run_wrk(url: str, *, seconds: int, connections: int, headers: dict[str, str]) -> Load:
    """Drive `url` with wrk (2 threads) and parse its report."""
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return Load(rps, p50, p99, int(bad.group(1)) if bad else 0)


async def _python_load(url: str, seconds: int, connections: int,
                       headers: dict[str, str]) -> Load:
    import httpx

    latencies: list[float] = []
    bad = 0
    deadline = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal bad
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            r = await client.get(url, headers=headers)
            latencies.append((time.perf_counter() - t) * 1000)
            bad += r.status_code >= 300

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(connections)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return Load(len(latencies) / elapsed, statistics.median(latencies),
                latencies[int(len(latencies) * 0.99) - 1], bad)


def run_load(url: str, *, seconds: int = 10, connections: int = 16,
             headers: dict[str, str] | None = None) -> Load:
    """wrk when installed (apt-get install wrk), else an asyncio httpx client."""
    headers = headers or {}
    if shutil.which("wrk"):
        return run_wrk(url, seconds=seconds, connections=connections, headers=headers)
    return asyncio.run(_python_load(url, seconds, connections, headers))
