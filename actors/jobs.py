"""Tenant Ray jobs: admission within the plan, submission, status, logs and stop.

A job is submitted through Ray's Jobs API (`JobSubmissionClient`, via the dashboard, with
Ray's auth token) with:

* ``entrypoint`` ``<this interpreter> -m actors.job_main`` and a working directory holding
  the request (``atp_job.json``) and, for an uploaded package, its modules;
* ``entrypoint_num_cpus`` / ``entrypoint_memory`` from the validated request, and
  ``entrypoint_resources`` from `actors.placement.job_entrypoint` (a dedicated group's
  resource, or the jobs group's ``atp_job_cpus`` instead of CPU);
* metadata ``atp_tenant_id`` (the metering collector meters the driver by it), ``atp_job_id``
  and the whole reservation ``atp_cpus`` / ``atp_memory`` (driver plus Tune trials);
* env ``ATP_API_URL`` and ``ATP_JOB_TOKEN``: a job token of the tenant's viewer role that
  expires after ``job_max_seconds``, never database credentials.

Admission adds the tenant's alive actors that belong to no job of the tenant (bots, risk,
execution) to the reservations of its unfinished jobs (their trial actors are inside
those), and refuses a job that would pass the plan's CPU or memory with 403
``quota_exceeded``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from actors.supervisor import ResourceQuotaExceeded
from actors.tenant_runtime import tenant_namespace
from tenancy.models import Plan
from trading.errors import Unavailable

log = logging.getLogger(__name__)

ENTRYPOINT_MODULE = "actors.job_main"
CONFIG_FILE = "atp_job.json"
UNFINISHED = ("PENDING", "RUNNING")
LOG_TAIL_LINES = 20
AGENT_WAIT_SECONDS = 60


def dashboard_url(gcs_address: str | None) -> str:
    """The dashboard (State and Jobs API) of the cluster at `gcs_address`."""
    from ray.dashboard.utils import ray_address_to_api_server_url

    url: str = ray_address_to_api_server_url(gcs_address)
    return url.rstrip("/")


def submission_id(job_id: uuid.UUID) -> str:
    return f"atp-{job_id}"


@dataclass(frozen=True)
class Load:
    """What a tenant holds now: CPUs and memory of its actors outside jobs plus its jobs."""

    cpus: float
    memory_bytes: int
    jobs: int


def admit_job(plan: Plan, load: Load, cpus: float, memory_bytes: int) -> None:
    """Raise `ResourceQuotaExceeded` unless a job reserving `cpus` and `memory_bytes` fits."""
    checks = (("cpu", None if plan.cpu is None else float(plan.cpu), round(load.cpus, 3),
               round(load.cpus + cpus, 3), " CPUs"),
              ("memory", plan.memory_bytes, load.memory_bytes, load.memory_bytes + memory_bytes, " bytes"))
    for name, limit, current, wanted, unit in checks:
        if limit is not None and wanted > limit:
            raise ResourceQuotaExceeded(
                f"the {plan.code} plan allows {name} {limit}{unit}; in use {current}{unit}, "
                f"this job needs {wanted}{unit} in all: ask for less (resources, concurrency) or "
                "wait for running work to end", field=name)


class RayJobs:
    """The cluster's Jobs and State APIs as the gateway uses them (blocking calls in threads)."""

    def __init__(self) -> None:
        self._client: Any = None

    def _jobs(self) -> Any:
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            self._client = JobSubmissionClient(dashboard_url(ray.get_runtime_context().gcs_address))
        return self._client

    async def load(self, slug: str, unfinished: Sequence[Mapping[str, Any]]) -> Load:
        """The tenant's current `Load` (see the module docstring).

        `unfinished` are the tenant's jobs its store holds as queued or running (with
        ``submission_id``, ``num_cpus``, ``memory_bytes``); each is asked of Ray, so the
        cost follows the tenant's own jobs, not every job the cluster ever ran.
        """
        try:
            return await asyncio.to_thread(self._load, tenant_namespace(slug), list(unfinished))
        except Exception as exc:
            raise Unavailable(f"Ray's state API is unavailable ({type(exc).__name__}); cannot admit "
                              "a job without it", code="ray_unavailable") from exc

    def _load(self, namespace: str, unfinished: list[Mapping[str, Any]]) -> Load:
        from ray.util.state import list_actors

        cpus, memory, job_ids, running = 0.0, 0, set(), 0
        for job in unfinished:
            try:
                info = self._jobs().get_job_info(job["submission_id"])
            except RuntimeError:  # Ray does not know it (yet, or any more)
                continue
            if _status(info.status) not in UNFINISHED:
                continue
            running += 1
            cpus += float(job["num_cpus"])
            memory += int(job["memory_bytes"])
            if info.job_id:
                job_ids.add(info.job_id)
        actors = list_actors(address=ray.get_runtime_context().gcs_address, detail=True, limit=10_000,
                             filters=[("ray_namespace", "=", namespace), ("state", "=", "ALIVE")])
        for actor in actors:
            if actor.job_id in job_ids:
                continue  # a trial or bot of one of the jobs above: inside its reservation
            resources = actor.required_resources or {}
            cpus += float(resources.get("CPU", 0))
            memory += int(resources.get("memory", 0))
        return Load(cpus, memory, running)

    async def submit(self, *, job_id: uuid.UUID, tenant_id: uuid.UUID, config: Mapping[str, Any],
                     files: Mapping[str, bytes], driver_cpus: float, driver_memory: int,
                     total_cpus: float, total_memory: int, api_url: str, token: str,
                     driver_resources: Mapping[str, float] | None = None) -> str:
        """Submit the job (see the module docstring); return its submission id."""
        return await asyncio.to_thread(self._submit, job_id, tenant_id, config, files, driver_cpus,
                                       driver_memory, total_cpus, total_memory, api_url, token,
                                       dict(driver_resources or {}))

    def _submit(self, job_id: uuid.UUID, tenant_id: uuid.UUID, config: Mapping[str, Any],
                files: Mapping[str, bytes], driver_cpus: float, driver_memory: int, total_cpus: float,
                total_memory: int, api_url: str, token: str, driver_resources: dict[str, float]) -> str:
        sid = submission_id(job_id)
        workdir = Path(tempfile.mkdtemp(prefix="atp-job-"))
        try:
            for path, content in files.items():
                target = workdir / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            (workdir / CONFIG_FILE).write_text(json.dumps(config))
            self._with_agent(lambda: self._jobs().submit_job(
                entrypoint=f"{sys.executable} -m {ENTRYPOINT_MODULE}", submission_id=sid,
                runtime_env={"working_dir": str(workdir),
                             "env_vars": {"ATP_API_URL": api_url, "ATP_JOB_TOKEN": token}},
                entrypoint_num_cpus=driver_cpus, entrypoint_memory=driver_memory,
                entrypoint_resources=driver_resources or None,
                metadata={"atp_tenant_id": str(tenant_id), "atp_job_id": str(job_id),
                          "atp_cpus": str(total_cpus), "atp_memory": str(total_memory)}))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return sid

    @staticmethod
    def _with_agent(submit: Callable[[], Any]) -> Any:
        """Submit, waiting up to `AGENT_WAIT_SECONDS` for the dashboard's job agent: just after
        a cluster starts it answers "No available agent" for a while."""
        deadline = time.monotonic() + AGENT_WAIT_SECONDS
        while True:
            try:
                return submit()
            except RuntimeError as exc:
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(1.0)

    async def status(self, sid: str) -> tuple[str, str | None] | None:
        """Ray's (status, message) of a job, or None when Ray does not know it."""
        def run() -> tuple[str, str | None] | None:
            try:
                info = self._jobs().get_job_info(sid)
            except RuntimeError:  # "Job ... does not exist"
                return None
            return _status(info.status), info.message
        return await asyncio.to_thread(run)

    async def logs(self, sid: str) -> str:
        """The job's whole driver log so far ("" when Ray no longer has it)."""
        def run() -> str:
            try:
                text: str = self._jobs().get_job_logs(sid)
            except RuntimeError:
                return ""
            return text
        return await asyncio.to_thread(run)

    async def stop(self, sid: str) -> bool:
        """Ask Ray to stop the job; False when it had already ended."""
        def run() -> bool:
            try:
                stopped: bool = self._jobs().stop_job(sid)
            except RuntimeError:
                return False
            return stopped
        return await asyncio.to_thread(run)


def _status(status: Any) -> str:
    """A Ray `JobStatus` (a str enum) as its plain value: "RUNNING"."""
    return str(getattr(status, "value", status))


def log_tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` non-empty lines of a log."""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])
