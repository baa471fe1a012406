"""Where Ray places the platform's work: custom resources asked for at creation.

Ray resources are logical scheduling units (``../ray-cluster.yaml`` gives each worker group
its own). Three settings steer placement; each is empty by default, so one local Ray (the
demo, the tests) runs everything anywhere:

* a plan's ``worker_group`` (``enterprise``): the tenant's strategy, risk and execution
  actors, and its jobs' drivers, ask for one unit of ``dedicated_<group>``, which only that
  group's nodes advertise;
* ``ATP_SYSTEM_RESOURCES`` (``{"atp_system": 0.001}``): extra resources the system actors
  (market-data feed, metering collector) ask for, to keep them on the head;
* ``ATP_JOB_CPU_RESOURCE`` (``atp_job_cpus``) and ``ATP_JOB_RESOURCES``: a job driver asks
  for its CPUs as that custom resource instead of ``CPU`` (the ``jobs`` group offers no
  ``CPU``), plus any extra resources.

An actor whose resources no node offers stays pending in Ray forever; the supervisor waits
a bounded time (``ATP_ACTOR_START_SECONDS``) and then fails with `placement_error`'s 503.
"""

from __future__ import annotations

from collections.abc import Mapping

from tenancy.plans import validate_worker_group
from tenancy.settings import Settings
from trading.errors import Unavailable

DEDICATED_PREFIX = "dedicated_"
DEDICATED_UNITS = 1.0  # what one actor or job driver takes; a dedicated node advertises many


def dedicated_resource(worker_group: str) -> str:
    """The Ray custom resource a dedicated group's nodes advertise: ``dedicated_<group>``."""
    return DEDICATED_PREFIX + str(validate_worker_group(worker_group))


def tenant_resources(worker_group: str | None) -> dict[str, float]:
    """Custom resources each of a tenant's actors asks for ({} for the shared pool)."""
    if worker_group is None:
        return {}
    return {dedicated_resource(worker_group): DEDICATED_UNITS}


def job_entrypoint(settings: Settings, worker_group: str | None,
                   driver_cpus: float) -> tuple[float, dict[str, float]]:
    """``(entrypoint_num_cpus, entrypoint_resources)`` of a tenant's job driver.

    A dedicated tenant's driver goes to its group (ordinary CPUs there); otherwise the
    settings may move the driver's CPUs onto ``job_cpu_resource`` and add ``job_resources``.
    """
    if worker_group is not None:
        return driver_cpus, tenant_resources(worker_group)
    resources = dict(settings.job_resources)
    if settings.job_cpu_resource is None:
        return driver_cpus, resources
    name = settings.job_cpu_resource
    resources[name] = round(resources.get(name, 0.0) + driver_cpus, 4)
    return 0.0, resources


def placement_error(what: str, resources: Mapping[str, float], offered: Mapping[str, float],
                    waited: float) -> Unavailable:
    """The 503 for actors Ray did not place within `waited` seconds.

    `offered` is what the cluster's alive nodes advertise in total (``ray.cluster_resources()``).
    """
    missing = sorted(name for name in resources if offered.get(name, 0) <= 0)
    if missing:
        reason = (f"no node of the Ray cluster offers {', '.join(missing)} (a dedicated worker "
                  "group without nodes, or one the autoscaler could not add)")
    else:
        reason = "the cluster has no room for them now (CPU, memory or custom resources)"
    return Unavailable(f"{what} were not placed within {waited:g} s: {reason}",
                       code="placement_unavailable")
