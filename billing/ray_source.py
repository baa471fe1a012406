"""Read the Ray runtime for metering: which tenant processes are alive, and what each uses.

- Alive actors come from Ray's state API (`ray.util.state.list_actors`, ``detail=True``):
  an actor in namespace ``tenant-<slug>`` belongs to that tenant. Running jobs come from
  `ray.util.state.list_jobs`: a job whose metadata carries ``atp_tenant_id`` belongs to
  that tenant, and its driver process is metered (custom strategies run as jobs).
- Per-process figures come from Ray's per-node reporter through the dashboard
  (``GET /nodes/{node_id}`` → ``data.detail.workers[]``: ``pid``, ``createTime``,
  ``cpuTimes{user,system}``, ``memoryInfo.rss``, ``gpuMemoryUsage`` in MB), which covers
  every node of the cluster. The reporter refreshes them every few seconds, so a reading
  lags by up to that period; cumulative CPU times make the lag harmless (it moves CPU
  into the next window, it loses none while the process lives).
- On the collector's own node `crosscheck` reads the same processes with psutil, to
  compare (it is never the source of a sample).

Token auth (on by default in Ray 2.60): the state API client adds the cluster token
itself; the dashboard requests here carry it from Ray's own token loader
(``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import psutil

from actors.jobs import dashboard_url
from billing.meter import Proc, ProcStat

log = logging.getLogger(__name__)

TENANT_NAMESPACE_PREFIX = "tenant-"
JOB_TENANT_KEY = "atp_tenant_id"
STATE_API_LIMIT = 10_000  # the API server's default ceiling (RAY_MAX_LIMIT_FROM_API_SERVER)


def _auth_headers() -> dict[str, str]:
    from ray._private.authentication.http_token_authentication import (
        get_auth_headers_if_auth_enabled,
    )

    return dict(get_auth_headers_if_auth_enabled({}))


class RayRuntime:
    """The live source of a metering reading (see the module docstring)."""

    def __init__(self, gcs_address: str | None = None, *, dashboard_url: str | None = None,
                 timeout: float = 10.0) -> None:
        self._gcs = gcs_address
        self._dashboard = dashboard_url
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self._headers: dict[str, str] | None = None
        self.unknown_tenants: set[str] = set()  # tenant namespaces of the last reading not mapped

    def _address(self) -> str | None:
        if self._gcs is None:
            import ray

            if ray.is_initialized():
                self._gcs = ray.get_runtime_context().gcs_address
        return self._gcs

    async def processes(self, tenants: dict[str, uuid.UUID]) -> list[Proc]:
        """Alive actors in tenant namespaces and running tenant jobs' drivers."""
        from ray.util.state import list_actors, list_jobs

        address = self._address()
        actors = await asyncio.to_thread(
            list_actors, address=address, filters=[("state", "=", "ALIVE")], detail=True,
            limit=STATE_API_LIMIT, raise_on_missing_output=False)
        if len(actors) >= STATE_API_LIMIT:
            log.error("the state API returned its limit of %d actors; some are not metered "
                      "(raise RAY_MAX_LIMIT_FROM_API_SERVER)", STATE_API_LIMIT)
        procs: list[Proc] = []
        self.unknown_tenants = set()
        for actor in actors:
            namespace = actor.ray_namespace or ""
            if not namespace.startswith(TENANT_NAMESPACE_PREFIX) or not actor.pid:
                continue
            slug = namespace[len(TENANT_NAMESPACE_PREFIX):]
            tenant = tenants.get(slug)
            if tenant is None:
                self.unknown_tenants.add(slug)
                continue
            if not actor.node_id:
                continue
            gpus = (actor.required_resources or {}).get("GPU", 0)
            procs.append(Proc(f"{actor.actor_id}:{actor.pid}", tenant,
                              actor.name or actor.class_name, "actor", actor.node_id,
                              int(actor.pid), Decimal(str(gpus))))
        known = set(tenants.values())
        jobs = await asyncio.to_thread(list_jobs, address=address, limit=STATE_API_LIMIT, detail=True,
                                       raise_on_missing_output=False)
        for job in jobs:
            procs.extend(_driver(job, known))
        return procs

    async def node_stats(self, node_ids: set[str]) -> dict[tuple[str, int], ProcStat]:
        """Every worker process the reporters know on these nodes, by (node, pid)."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout)
        base = self._dashboard or await asyncio.to_thread(dashboard_url, self._address())
        self._dashboard = base
        if self._headers is None:
            self._headers = await asyncio.to_thread(_auth_headers)
        stats: dict[tuple[str, int], ProcStat] = {}
        for node_id in sorted(node_ids):
            response = await self._client.get(f"{base}/nodes/{node_id}", headers=self._headers)
            if response.status_code == 401:  # the token changed: load it again, once
                self._headers = await asyncio.to_thread(_auth_headers)
                response = await self._client.get(f"{base}/nodes/{node_id}",
                                                  headers=self._headers)
            response.raise_for_status()
            detail = (response.json().get("data") or {}).get("detail") or {}
            for worker in detail.get("workers") or []:
                stat = _stat(worker)
                if stat is not None:
                    stats[(node_id, stat.pid)] = stat
        return stats

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _driver(job: Any, tenants: set[uuid.UUID]) -> list[Proc]:
    status = str(getattr(job, "status", ""))
    metadata = getattr(job, "metadata", None) or {}
    info = getattr(job, "driver_info", None)
    if not status.endswith("RUNNING") or JOB_TENANT_KEY not in metadata or info is None:
        return []
    try:
        tenant = uuid.UUID(str(metadata[JOB_TENANT_KEY]))
        pid = int(info.pid)
    except (ValueError, TypeError, AttributeError):
        return []
    node = getattr(job, "driver_node_id", None)
    if tenant not in tenants or not node:
        return []
    name = getattr(job, "submission_id", None) or getattr(job, "job_id", "?")
    return [Proc(f"job:{name}:{pid}", tenant, f"job:{name}", "driver", node, pid)]


def _stat(worker: dict[str, Any]) -> ProcStat | None:
    try:
        times = worker["cpuTimes"]
        created = worker.get("createTime")
        return ProcStat(
            pid=int(worker["pid"]),
            cpu_seconds=Decimal(str(times["user"])) + Decimal(str(times["system"])),
            rss_bytes=int((worker.get("memoryInfo") or {}).get("rss") or 0),
            gpu_memory_mb=Decimal(str(worker.get("gpuMemoryUsage") or 0)),
            created_at=datetime.fromtimestamp(float(created), UTC) if created else None)
    except (KeyError, TypeError, ValueError):
        log.warning("reporter entry without CPU times: %r", {k: worker.get(k) for k in ("pid",)})
        return None


def crosscheck(stats: dict[tuple[str, int], ProcStat], node_id: str
               ) -> dict[int, tuple[Decimal, Decimal]]:
    """psutil's cumulative CPU seconds beside the reporter's, for processes on this node."""
    out: dict[int, tuple[Decimal, Decimal]] = {}
    for (node, pid), stat in stats.items():
        if node != node_id:
            continue
        try:
            times = psutil.Process(pid).cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out[pid] = (stat.cpu_seconds, Decimal(str(times.user + times.system)))
    return out
