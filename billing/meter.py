"""Turn readings of the Ray runtime into usage samples: the pure part of the collector.

One reading lists the tenant processes alive now (`Proc`: an actor in a tenant namespace,
or the driver of a tenant's job) and, per node, what Ray's reporter says about each
process (`ProcStat`: cumulative CPU seconds, RSS, GPU memory). `measure` turns a reading
and the previous cumulative CPU per process into one window's samples per tenant:

- ``cpu_seconds``: the difference of cumulative CPU times (user + system) since the last
  reading of the same process, never an instantaneous percentage. Ray's list of alive
  actors is live while the reporter lags (up to its refresh period), so a process listed
  now and not at the last reading was born since: it is counted from zero, its whole
  life, even if the reporter shows it only later (its cursor waits at zero). When the
  collector was not watching (`watching` False: its first window, or its cursors were
  lost), a process's first reading is a baseline and nothing before it is counted. A
  process that is gone loses its cursor; its CPU after its last reading is not seen (at
  most one reporter period).
- ``memory_gb_seconds``: RSS at the reading times the part of the window the process lived.
- ``gpu_seconds``: GPUs assigned to the actor times that part of the window.
- ``gpu_memory_gb_seconds``: GPU memory in use times that part of the window.

Gauges (RSS, GPU memory) are integrated over at most `max_gap` seconds of the window, so
a collector that was down for an hour does not bill an hour of the memory it sees now.
`measure` also returns each tenant's load (CPU rate and RSS, per process) for the quota
watch.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from billing.ledger import GB, Sample

MB_PER_GB = Decimal(1000)
RUNTIME_SOURCE = "ray-runtime"


@dataclass(frozen=True)
class Proc:
    """A tenant process to meter."""

    key: str  # stable per process: "<actor or job id>:<pid>"
    tenant_id: uuid.UUID
    name: str  # actor name ("strategy-<bot>", "risk", ...) or "job:<submission id>"
    kind: Literal["actor", "driver"]
    node_id: str
    pid: int
    gpus: Decimal = Decimal(0)


@dataclass(frozen=True)
class ProcStat:
    """What the reporter says about one process."""

    pid: int
    cpu_seconds: Decimal  # cumulative user + system
    rss_bytes: int
    gpu_memory_mb: Decimal = Decimal(0)
    created_at: datetime | None = None  # the process's start


@dataclass
class TenantLoad:
    """A tenant's measured load in one window (for the quota watch)."""

    cpu_rate: Decimal = Decimal(0)  # CPU-seconds per second (cores)
    rss_bytes: int = 0
    by_process: dict[str, tuple[Decimal, int]] = field(default_factory=dict)  # name → (cpu, rss)


@dataclass
class Measurement:
    samples: list[Sample]
    cursors: dict[str, tuple[uuid.UUID, Decimal]]  # key → (tenant, cumulative CPU seconds)
    loads: dict[uuid.UUID, TenantLoad]
    unseen: list[str]  # keys of alive processes the reporter did not list


def measure(procs: list[Proc], stats: dict[tuple[str, int], ProcStat],
            cursors: dict[str, Decimal], *, window_start: datetime, window_end: datetime,
            max_gap: timedelta, watching: bool, source: str = RUNTIME_SOURCE) -> Measurement:
    """One window's samples from one reading (see the module docstring)."""
    seconds = Decimal(str((window_end - window_start).total_seconds()))
    gauge_from = max(window_start, window_end - max_gap)
    totals: dict[uuid.UUID, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    loads: dict[uuid.UUID, TenantLoad] = defaultdict(TenantLoad)
    new_cursors: dict[str, tuple[uuid.UUID, Decimal]] = {}
    unseen: list[str] = []
    for proc in procs:
        stat = stats.get((proc.node_id, proc.pid))
        previous = cursors.get(proc.key)
        if previous is None and watching:
            previous = Decimal(0)  # not alive at the last reading: all of its CPU is new
        if stat is None:  # not reported yet (the reporter lags): keep what we know
            unseen.append(proc.key)
            if previous is not None:
                new_cursors[proc.key] = (proc.tenant_id, previous)
            continue
        if previous is None:
            previous = stat.cpu_seconds  # running before we watched: a baseline
        cpu = max(Decimal(0), stat.cpu_seconds - previous)
        new_cursors[proc.key] = (proc.tenant_id, max(stat.cpu_seconds, previous))
        lived_from = max(gauge_from, stat.created_at or gauge_from)
        lived = Decimal(str(max(0.0, (window_end - lived_from).total_seconds())))
        tenant = totals[proc.tenant_id]
        tenant["cpu_seconds"] += cpu
        tenant["memory_gb_seconds"] += Decimal(stat.rss_bytes) / GB * lived
        tenant["gpu_seconds"] += proc.gpus * lived
        tenant["gpu_memory_gb_seconds"] += stat.gpu_memory_mb / MB_PER_GB * lived
        load = loads[proc.tenant_id]
        load.rss_bytes += stat.rss_bytes
        load.by_process[proc.name] = (cpu, stat.rss_bytes)
    for tenant_id, load in loads.items():
        load.cpu_rate = totals[tenant_id]["cpu_seconds"] / seconds if seconds > 0 else Decimal(0)
    samples = [Sample(tenant_id, meter, window_start, window_end, source, quantity)
               for tenant_id, meters in sorted(totals.items(), key=lambda kv: str(kv[0]))
               for meter, quantity in sorted(meters.items()) if quantity > 0]
    return Measurement(samples, new_cursors, dict(loads), unseen)
