"""Readings of the runtime → usage samples (the collector's pure part)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from billing.meter import Proc, ProcStat, measure

T0 = datetime(2030, 1, 1, tzinfo=UTC)
A, B = uuid.UUID(int=1), uuid.UUID(int=2)


def proc(key: str, tenant: uuid.UUID = A, pid: int = 10, name: str = "risk",
         gpus: int = 0) -> Proc:
    return Proc(key, tenant, name, "actor", "n1", pid, Decimal(gpus))


def stat(pid: int, cpu: str, rss: int = 0, gpu_mb: int = 0,
         created: datetime | None = None) -> ProcStat:
    return ProcStat(pid, Decimal(cpu), rss, Decimal(gpu_mb), created)


def run(procs: list[Proc], stats: list[tuple[int, ProcStat]], cursors: dict[str, Decimal],
        watching: bool = True, seconds: int = 15, gap: int = 30) -> tuple[dict, object]:
    m = measure(procs, {("n1", pid): s for pid, s in stats}, cursors,
                window_start=T0, window_end=T0 + timedelta(seconds=seconds),
                max_gap=timedelta(seconds=gap), watching=watching)
    return {(s.tenant_id, s.meter): s.quantity for s in m.samples}, m


def test_cpu_is_the_difference_of_cumulative_times() -> None:
    got, m = run([proc("a:10")], [(10, stat(10, "12.5"))], {"a:10": Decimal("10")})
    assert got[(A, "cpu_seconds")] == Decimal("2.5")
    assert m.cursors["a:10"] == (A, Decimal("12.5"))


def test_a_process_born_since_the_last_reading_counts_from_zero() -> None:
    got, _ = run([proc("a:10")], [(10, stat(10, "3.2"))], {})
    assert got[(A, "cpu_seconds")] == Decimal("3.2")


def test_without_a_previous_reading_the_first_is_a_baseline() -> None:
    got, m = run([proc("a:10")], [(10, stat(10, "3.2"))], {}, watching=False)
    assert (A, "cpu_seconds") not in got  # nothing counted, zero samples are left out
    assert m.cursors["a:10"] == (A, Decimal("3.2"))


def test_a_process_the_reporter_does_not_show_yet_waits_at_zero() -> None:
    got, m = run([proc("a:10")], [], {})
    assert got == {} and m.unseen == ["a:10"] and m.cursors["a:10"] == (A, Decimal(0))
    got, _ = run([proc("a:10")], [(10, stat(10, "4"))], {"a:10": Decimal(0)})
    assert got[(A, "cpu_seconds")] == Decimal(4)


def test_a_counter_that_goes_back_counts_nothing() -> None:
    got, m = run([proc("a:10")], [(10, stat(10, "1"))], {"a:10": Decimal("5")})
    assert (A, "cpu_seconds") not in got
    assert m.cursors["a:10"] == (A, Decimal("5"))


def test_gauges_integrate_over_the_lived_part_of_the_window_capped_by_the_gap() -> None:
    late = T0 + timedelta(seconds=5)
    got, m = run([proc("a:10", gpus=1), proc("b:11", B, 11)],
                 [(10, stat(10, "0", rss=2_000_000_000, gpu_mb=500, created=late)),
                  (11, stat(11, "0", rss=1_000_000_000))], {}, seconds=100, gap=30)
    # a lived 95 s of the window but gauges count at most the last 30 s
    assert got[(A, "memory_gb_seconds")] == Decimal(60)
    assert got[(A, "gpu_seconds")] == Decimal(30)
    assert got[(A, "gpu_memory_gb_seconds")] == Decimal(15)
    assert got[(B, "memory_gb_seconds")] == Decimal(30)
    assert m.loads[A].rss_bytes == 2_000_000_000


def test_loads_per_tenant_and_process_for_the_quota_watch() -> None:
    _, m = run([proc("a:10", name="strategy-x"), proc("a:11", pid=11, name="risk")],
               [(10, stat(10, "20", rss=5)), (11, stat(11, "10", rss=7))],
               {"a:10": Decimal(5), "a:11": Decimal(10)}, seconds=10)
    load = m.loads[A]
    assert load.cpu_rate == Decimal("1.5") and load.rss_bytes == 12
    assert load.by_process == {"strategy-x": (Decimal(15), 5), "risk": (Decimal(0), 7)}
