"""Backtests, optimisations, strategy packages and the Ray jobs that run them.

Every backtest and optimisation runs as a Ray job of the tenant (`actors.jobs`), admitted
against the plan's CPU and memory (403 ``quota_exceeded``), in the tenant's namespace; it
reports back to ``POST /v1/jobs/{id}/events`` with its job token. Reads refresh an
unfinished job from Ray, so a job that died silently shows as failed with its last log
lines. Writes need the trader role, reads the viewer role.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import HTMLResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from actors import package_bots
from actors.bots import BotStore
from actors.jobs import admit_job, log_tail
from actors.placement import job_entrypoint
from actors.research import (
    FINISHED,
    EventHook,
    OptimizationSpec,
    ResearchStore,
    RunSpec,
    check_names,
    parse_backtest,
    parse_optimization,
)
from actors.supervisor import bot_model
from serve.deps import PrincipalDep, ServicesDep, TraderDep, ViewerDep, tenant_of
from serve.errors import bounded_body
from serve.schemas_research import BacktestBody, JobBody, OptimizationBody, body_schema
from serve.schemas_trading import BotOut
from tenancy.auth import Principal
from tenancy.keys import load_cipher
from tenancy.plans import get_plan
from trading.errors import Conflict, Forbidden, Invalid, Unavailable
from trading.orders import Fill, Side
from trading.packages import MAX_PACKAGE_BYTES, inspect_package
from trading.report import render_report
from trading.research import MAX_CURVE_POINTS, MAX_STORED_TRADES, metrics_from_json
from trading.strategy import NAME_RE, get_strategy

router = APIRouter(prefix="/v1", tags=["research"])

MAX_EVENT_BYTES = 32 * 1024 * 1024
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'"
SILENT_GRACE_SECONDS = 120
INSPECT_CPUS, INSPECT_MEMORY = 0.1, 256 * 1024 * 1024  # the job that imports an upload
INSPECT_SECONDS = 120  # a job Ray does not know is failed after this long


def _store(principal: Principal, services: ServicesDep) -> ResearchStore:
    tenant = tenant_of(principal)
    return ResearchStore(services.db, tenant.id, tenant.slug)


async def _json_body(request: Request) -> Any:
    import json

    raw = await bounded_body(request, MAX_PACKAGE_BYTES, "the request")
    try:
        return json.loads(raw or b"null")
    except ValueError:
        raise Invalid("the body must be JSON", field="body") from None


@dataclass(frozen=True)
class _Job:
    """What one job needs submitted: its request, files and resources (driver and total)."""

    kind: str
    config: dict[str, Any]
    files: dict[str, bytes]
    driver_cpus: float
    driver_memory: int
    cpus: float
    memory: int


async def _admission(request: Request, principal: Principal, services: ServicesDep, job: _Job
                     ) -> tuple[Callable[[], Awaitable[None]], Callable[[uuid.UUID], Awaitable[str]]]:
    """The `admit` and `submit` steps of `ResearchStore.launch_job` for `job`."""
    tenant = tenant_of(principal)
    async with services.db.platform() as uow:
        plan = await get_plan(uow.conn, tenant.plan)
    settings = services.settings
    api_url = settings.internal_api_url or str(request.base_url)

    async def admit() -> None:
        load = await services.jobs.load(tenant.slug, await _store(principal, services).unfinished_jobs())
        admit_job(plan, load, job.cpus, job.memory)

    async def submit(job_id: uuid.UUID) -> str:
        config = {**job.config, "job_id": str(job_id), "kind": job.kind, "namespace": f"tenant-{tenant.slug}"}
        driver_cpus, driver_resources = job_entrypoint(settings, plan.worker_group, job.driver_cpus)
        try:
            return await services.jobs.submit(
                job_id=job_id, tenant_id=tenant.id, config=config, files=job.files,
                driver_cpus=driver_cpus, driver_memory=job.driver_memory, total_cpus=job.cpus,
                total_memory=job.memory, api_url=api_url,
                token=services.auth.job_token(job_id, tenant.id, settings.job_max_seconds),
                driver_resources=driver_resources)
        except Exception as exc:
            raise Unavailable(f"Ray refused the job: {type(exc).__name__}: {exc}"[:500],
                              code="ray_unavailable") from exc

    return admit, submit


async def _launch(kind: str, body: Any, request: Request, principal: Principal,
                  services: ServicesDep) -> uuid.UUID:
    store = _store(principal, services)
    name = body.get("package") if isinstance(body, dict) else None
    if name is not None and not isinstance(name, str):
        raise Invalid("package must be a package name", field="package")
    package = None if name is None else await store.package(name, content=True)
    spec: RunSpec | OptimizationSpec = (parse_backtest(body, package) if kind == "backtest"
                                        else parse_optimization(body, package))
    run = spec if isinstance(spec, RunSpec) else spec.run
    model = None if package is not None else await _model_of(principal, services, spec)
    if model is not None:  # the version is fixed now: the run says which one it traded on
        run = replace(run, params={**run.params, "version": model["version"]})
        spec = run if isinstance(spec, RunSpec) else replace(spec, run=run)
    found = [] if package is None else package["strategies"]
    job = _Job(kind, {**spec.config(), "package_strategies": found, "model": model},
               {} if package is None else package["files"], run.num_cpus, run.memory_bytes,
               run.num_cpus if isinstance(spec, RunSpec) else spec.total_cpus,
               run.memory_bytes if isinstance(spec, RunSpec) else spec.total_memory)
    admit, submit = await _admission(request, principal, services, job)
    return await store.launch(kind, spec, package, principal.actor, admit, submit)


async def _model_of(principal: Principal, services: ServicesDep, spec: RunSpec | OptimizationSpec
                    ) -> dict[str, Any] | None:
    """The model a run of a strategy that `uses_model` trades on (`actors.supervisor.bot_model`)."""
    run = spec if isinstance(spec, RunSpec) else spec.run
    if isinstance(spec, OptimizationSpec):
        searched = sorted({"model", "version"} & set(spec.search_space))
        if searched and get_strategy(run.strategy).uses_model:
            raise Invalid(f"{searched[0]} cannot be searched: an optimization trades on one model version",
                          field=f"search_space.{searched[0]}")
    tenant = tenant_of(principal)
    return await bot_model(services.db, tenant.id, tenant.slug, run.strategy, run.params)


async def _refresh(store: ResearchStore, services: ServicesDep, job: dict[str, Any]) -> dict[str, Any]:
    """Bring an unfinished job's status up to date with Ray (see the module docstring)."""
    if job["status"] in FINISHED:
        return job
    state = await services.jobs.status(job["submission_id"])
    if state is None:
        age = (datetime.now(job["created_at"].tzinfo) - job["created_at"]).total_seconds()
        if age < SILENT_GRACE_SECONDS:
            return job
        await store.finish(job["id"], "failed", "Ray no longer knows this job (was the cluster restarted?)")
        return await store.job(job["id"])
    ray_status, message = state
    if ray_status not in ("SUCCEEDED", "FAILED", "STOPPED"):
        return job
    tail = log_tail(await services.jobs.logs(job["submission_id"]))
    if ray_status == "STOPPED":
        await store.finish(job["id"], "stopped", "stopped")
    else:
        why = (message or "the job failed") if ray_status == "FAILED" else \
            "the job ended without reporting a result"
        await store.finish(job["id"], "failed", f"{why}\n--- last log lines ---\n{tail}" if tail else why)
    return await store.job(job["id"])


async def _refreshed_target(store: ResearchStore, services: ServicesDep, target: dict[str, Any]
                            ) -> None:
    if target["status"] not in FINISHED:
        await _refresh(store, services, await store.job(target["job_id"]))


# -- backtests ---------------------------------------------------------------------------


@router.post("/backtests", status_code=status.HTTP_202_ACCEPTED, openapi_extra=body_schema(BacktestBody))
async def create_backtest(request: Request, principal: TraderDep, services: ServicesDep) -> dict[str, Any]:
    """Run a backtest as a Ray job within the plan; poll `GET /v1/backtests/{id}`.

    Body: ``strategy``, ``symbols``, ``from``, ``to`` (required); ``params``, ``package``
    (an uploaded strategy package), ``data`` (``{"source": "synthetic", "seed", "interval"}``
    or ``{"source": "market"}``), ``capital``, ``fee_bps``, ``slippage_bps``,
    ``resources`` (``num_cpus``, ``memory_mb``).
    """
    store = _store(principal, services)
    backtest_id = await _launch("backtest", await _json_body(request), request, principal, services)
    return await store.backtest(backtest_id)


@router.get("/backtests")
async def list_backtests(principal: ViewerDep, services: ServicesDep,
                         limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    """The tenant's backtests, newest first (without curves and trades)."""
    return await _store(principal, services).backtests(limit)


@router.get("/backtests/{backtest_id}")
async def get_backtest(backtest_id: str, principal: ViewerDep, services: ServicesDep,
                       trades: bool = Query(False, description="include the trades")) -> dict[str, Any]:
    """One backtest: status, progress, metrics, the (thinned) equity curve; trades on request."""
    store = _store(principal, services)
    found = await store.backtest(backtest_id)
    await _refreshed_target(store, services, found)
    result = await store.backtest(backtest_id, detail=True)
    if not trades:
        result.pop("trades")
    return result


@router.get("/backtests/{backtest_id}/report", response_class=HTMLResponse)
async def backtest_report(backtest_id: str, principal: ViewerDep, services: ServicesDep) -> HTMLResponse:
    """The backtest's HTML report: equity and drawdown charts, metrics, settings, trades."""
    found = await _store(principal, services).backtest(backtest_id, detail=True)
    if found["status"] != "succeeded" or found["metrics"] is None:
        raise Conflict(f"the backtest is {found['status']}; a report needs a finished backtest with "
                       "at least two bars", code="backtest_not_finished")
    fills = [Fill(f"{backtest_id}-{i}", t["client_order_id"], t["symbol"], Side(t["side"]), t["quantity"],
                  t["price"], t["fee"], t["ts"]) for i, t in enumerate(found["trades"], 1)]
    curve = [(datetime.fromisoformat(t), Decimal(v)) for t, v in found["equity_curve"]]
    settings = {"strategy": found["strategy"], **found["params"], "symbols": ", ".join(found["symbols"]),
                "from": found["start_at"].isoformat(), "to": found["end_at"].isoformat(),
                "capital": found["capital"], "fee_bps": found["fee_bps"],
                "slippage_bps": found["slippage_bps"], "bars": found["bars"]}
    html = render_report(title=f"Backtest {found['strategy']} {', '.join(found['symbols'])}",
                         equity_curve=curve, fills=fills, metrics=metrics_from_json(found["metrics"]),
                         params=settings)
    return HTMLResponse(html, headers={"Content-Security-Policy": REPORT_CSP})


# -- optimisations ------------------------------------------------------------------------


@router.post("/optimizations", status_code=status.HTTP_202_ACCEPTED,
             openapi_extra=body_schema(OptimizationBody))
async def create_optimization(request: Request, principal: TraderDep, services: ServicesDep
                              ) -> dict[str, Any]:
    """Search a strategy's parameters with Ray Tune as a Ray job; poll `GET /v1/optimizations/{id}`.

    The run fields of a backtest plus ``search_space`` (``{param: {"type": "int"|"float",
    "low", "high"} | {"type": "choice", "values"}}``), ``objective`` (sharpe, calmar,
    return), ``max_drawdown`` (a cap: trials beyond it are infeasible), ``in_sample`` (the
    fraction of the period trials see; the rest is out-of-sample), ``num_trials``,
    ``concurrency``, ``cpus_per_trial``, ``memory_per_trial_mb``, ``seed``. The driver
    (``resources``) plus ``concurrency`` trials must fit the plan.
    """
    store = _store(principal, services)
    opt_id = await _launch("optimization", await _json_body(request), request, principal, services)
    return await store.optimization(opt_id)


@router.get("/optimizations")
async def list_optimizations(principal: ViewerDep, services: ServicesDep,
                             limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    return await _store(principal, services).optimizations(limit)


@router.get("/optimizations/{optimization_id}")
async def get_optimization(optimization_id: str, principal: ViewerDep, services: ServicesDep
                           ) -> dict[str, Any]:
    """One optimisation: progress (``trials_done`` of ``num_trials``), trials, best parameters
    with their in-sample and out-of-sample results."""
    store = _store(principal, services)
    await _refreshed_target(store, services, await store.optimization(optimization_id))
    return await store.optimization(optimization_id)


class ApplyBest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bot_id: str


@router.post("/optimizations/{optimization_id}/apply", response_model=BotOut)
async def apply_best(optimization_id: str, body: ApplyBest, principal: TraderDep, services: ServicesDep
                     ) -> BotOut:
    """Set a stopped bot's parameters to the optimisation's best (same strategy only)."""
    found = await _store(principal, services).optimization(optimization_id)
    if found["status"] != "succeeded" or not found["best_params"]:
        raise Conflict(f"the optimization is {found['status']}; only a finished one has best parameters",
                       code="optimization_not_finished")
    tenant = tenant_of(principal)
    bots = BotStore(services.db, tenant.id, tenant.slug)
    bot = await bots.get(body.bot_id)
    if bot.strategy != found["strategy"]:
        raise Invalid(f"the bot runs {bot.strategy}, the optimization searched {found['strategy']}",
                      field="bot_id")
    return BotOut.of(await bots.update(bot.id, {"params": found["best_params"]}))


# -- strategy packages ----------------------------------------------------------------------


@router.put("/strategy-packages/{name}", openapi_extra={"requestBody": {"required": True, "content": {
    "text/x-python": {"schema": {"type": "string"}},
    "application/zip": {"schema": {"type": "string", "format": "binary"}}}}})
async def put_package(name: str, request: Request, principal: TraderDep, services: ServicesDep,
                      filename: str = Query(..., min_length=4, max_length=200,
                                            description="the file's name: something.py or something.zip")
                      ) -> dict[str, Any]:
    """Upload (or replace) a strategy package: the body is the .py or .zip file itself.

    The code is parsed, never run, here: 422 for a syntax error or no `Strategy` subclass.
    Then a small job of the tenant imports it and describes its strategies (their declared
    parameters): 422 with the reason when that fails. Only then is the package stored.
    """
    content = await bounded_body(request, MAX_PACKAGE_BYTES, "the package")
    if not NAME_RE.fullmatch(name):
        raise Invalid("a package name is lower-case snake case (letters, digits, underscores)", field="name")
    info = inspect_package(filename, content)
    check_names(info)
    store = _store(principal, services)
    found = [f.as_dict() for f in info.strategies]
    job = _Job("inspect", {"package_strategies": found}, info.files, INSPECT_CPUS, INSPECT_MEMORY,
               INSPECT_CPUS, INSPECT_MEMORY)
    admit, submit = await _admission(request, principal, services, job)
    job_id = await store.launch_job("inspect", cpus=job.cpus, memory=job.memory, package=None,
                                    actor=principal.actor, admit=admit, submit=submit)
    deadline = time.monotonic() + INSPECT_SECONDS
    checked = await store.job(job_id)
    while checked["status"] not in FINISHED:
        if time.monotonic() > deadline:
            await services.jobs.stop(checked["submission_id"])
            await store.finish(job_id, "failed", "checking the package took too long")
            raise Unavailable("checking the package took too long; try again", code="package_check_timeout")
        await asyncio.sleep(0.3)
        checked = await _refresh(store, services, await store.job(job_id))
    if checked["status"] != "succeeded":
        raise Invalid(f"the package cannot be loaded: {checked['message']}", field="file")
    return await store.put_package(name, filename, info, principal.actor, checked["result"])


@router.get("/strategy-packages")
async def list_packages(principal: ViewerDep, services: ServicesDep) -> list[dict[str, Any]]:
    return await _store(principal, services).list_packages()


@router.get("/strategy-packages/{name}")
async def get_package(name: str, principal: ViewerDep, services: ServicesDep) -> dict[str, Any]:
    return await _store(principal, services).package(name)


# -- jobs -------------------------------------------------------------------------------------


@router.post("/jobs", status_code=status.HTTP_202_ACCEPTED, openapi_extra=body_schema(JobBody))
async def submit_job(request: Request, principal: TraderDep, services: ServicesDep) -> dict[str, Any]:
    """Run an uploaded package as a Ray job: ``kind`` (backtest or optimization), ``package``,
    and the fields of that kind's request."""
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise Invalid("the request must be an object", field=None)
    kind = body.pop("kind", None)
    if kind not in ("backtest", "optimization"):
        raise Invalid("kind must be backtest or optimization", field="kind")
    if "package" not in body:
        raise Invalid("package is required (upload one with PUT /v1/strategy-packages/{name})",
                      field="package")
    store = _store(principal, services)
    target = await _launch(kind, body, request, principal, services)
    found = await (store.backtest(target) if kind == "backtest" else store.optimization(target))
    return await store.job(found["job_id"])


@router.get("/jobs")
async def list_jobs(principal: ViewerDep, services: ServicesDep,
                    limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    return await _store(principal, services).jobs(limit)


@router.get("/jobs/{job_id}")
async def get_job(job_id: str, principal: ViewerDep, services: ServicesDep) -> dict[str, Any]:
    """One job, refreshed from Ray: a crash shows as failed with its last log lines."""
    store = _store(principal, services)
    return await _refresh(store, services, await store.job(job_id))


@router.get("/jobs/{job_id}/logs", response_class=PlainTextResponse)
async def job_logs(job_id: str, principal: ViewerDep, services: ServicesDep,
                   tail: int | None = Query(None, ge=1, le=100_000)) -> PlainTextResponse:
    """The job driver's log (the last `tail` lines when given)."""
    job = await _store(principal, services).job(job_id)
    text = await services.jobs.logs(job["submission_id"])
    return PlainTextResponse(log_tail(text, tail) if tail else text)


@router.post("/jobs/{job_id}/stop")
async def stop_job(job_id: str, principal: TraderDep, services: ServicesDep) -> dict[str, Any]:
    """Stop a running job (its trials with it); a finished job is a 409 ``job_finished``."""
    store = _store(principal, services)
    job = await _refresh(store, services, await store.job(job_id))
    if job["status"] in FINISHED:
        raise Conflict(f"the job has already {job['status']}", code="job_finished")
    await services.jobs.stop(job["submission_id"])
    await store.finish(job["id"], "stopped", f"stopped by {principal.actor}")
    return await store.job(job["id"])


# -- events from jobs ---------------------------------------------------------------------------


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Started(_Event):
    type: Literal["started"]


class Progress(_Event):
    type: Literal["progress"]
    fraction: float = Field(ge=0, le=1)
    bars: int = Field(ge=0)


class MetricsIn(_Event):
    total_return: float
    cagr: float
    sharpe: float | None
    sortino: float | None
    calmar: float | None
    max_drawdown: float
    max_drawdown_bars: int
    max_drawdown_duration: float
    round_trips: int
    win_rate: float | None
    profit_factor: float | None
    exposure: float
    turnover: float
    periods_per_year: float
    interval: float


class Trial(_Event):
    type: Literal["trial"]
    number: int = Field(ge=1, le=100_000)
    params: dict[str, Any]
    status: Literal["succeeded", "failed", "infeasible"]
    objective: float | None = None
    metrics: MetricsIn | None = None
    error: str | None = Field(default=None, max_length=4000)


class TradeIn(_Event):
    ts: datetime
    symbol: str = Field(min_length=1, max_length=32)
    side: Literal["buy", "sell"]
    quantity: Decimal = Field(gt=0)
    price: Decimal = Field(gt=0)
    fee: Decimal = Field(ge=0)
    client_order_id: str = Field(min_length=1, max_length=100)


class BacktestDone(_Event):
    type: Literal["backtest"]
    bars: int = Field(ge=0)
    params: dict[str, Any]
    metrics: MetricsIn | None
    final_equity: Decimal
    trade_count: int = Field(ge=0)
    trades: list[TradeIn] = Field(max_length=MAX_STORED_TRADES)
    equity_curve: list[tuple[datetime, Decimal]] = Field(max_length=MAX_CURVE_POINTS + 2)


class Judged(_Event):
    objective: float | None
    metrics: MetricsIn | None


class OptimizationDone(_Event):
    type: Literal["optimization"]
    best_params: dict[str, Any]
    in_sample: Judged
    out_of_sample: Judged


class Described(_Event):
    module: str = Field(max_length=300)
    class_name: str = Field(max_length=200)
    name: str = Field(max_length=64)
    description: str = Field(max_length=4000)
    params: dict[str, dict[str, Any]]


class Inspected(_Event):
    type: Literal["inspected"]
    strategies: list[Described] = Field(max_length=200)


class ModelDone(_Event):
    type: Literal["model"]
    artifact: str = Field(max_length=MAX_EVENT_BYTES, description="the artifact, base64")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    params: dict[str, Any]
    metrics: dict[str, Any]
    backtest: dict[str, Any] | None


class Stopped(_Event):
    type: Literal["stopped"]
    message: str = Field(max_length=2000)


class Failed(_Event):
    type: Literal["failed"]
    message: str = Field(max_length=8000)
    field: str | None = Field(default=None, max_length=200)


JobEvent = TypeAdapter(Annotated[
    Started | Progress | Trial | BacktestDone | OptimizationDone | Failed | Stopped | Inspected | ModelDone,
    Field(discriminator="type")])


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


async def _model_hook(principal: Principal, services: ServicesDep, event: Any) -> EventHook | None:
    """What a training job's result or failure writes into the model registry (same transaction)."""
    from models import registry
    from models.serving import artifact_context

    tenant = tenant_of(principal)
    if isinstance(event, ModelDone):
        try:
            blob = base64.b64decode(event.artifact, validate=True)
        except ValueError:
            raise Invalid("artifact must be base64", field="artifact") from None
        if hashlib.sha256(blob).hexdigest() != event.sha256:
            raise Invalid("the artifact does not match its sha256", field="sha256")
        async with services.db.platform() as uow:
            cipher = await load_cipher(uow.conn, services.settings.master_key_bytes, tenant.id)

        async def store_model(conn: Any, kind: str, _event: Any) -> None:
            name, version = await registry.version_of_job(conn, principal.job_id)  # type: ignore[arg-type]
            await registry.finish_version(
                conn, principal.job_id, encrypted=cipher.encrypt(blob, artifact_context(name, version)),  # type: ignore[arg-type]
                sha256=event.sha256, size=len(blob), params=event.params, metrics=_finite(event.metrics),
                backtest=_finite(event.backtest) if event.backtest else None)
        return store_model
    if isinstance(event, Failed):
        async def fail_model(conn: Any, kind: str, _event: Any) -> None:
            if kind == "train":
                await registry.fail_version(conn, principal.job_id, event.message)  # type: ignore[arg-type]
        return fail_model
    return None


@router.post("/jobs/{job_id}/events", status_code=status.HTTP_204_NO_CONTENT, include_in_schema=False)
async def job_event(job_id: str, request: Request, principal: PrincipalDep, services: ServicesDep) -> None:
    """An event from the job itself (its job token only): progress, trials, the result, or failure."""
    if principal.kind != "job" or str(principal.job_id) != job_id:
        raise Forbidden("only the job itself reports its events", code="job_token_required")
    raw = await bounded_body(request, MAX_EVENT_BYTES, "the event")
    try:
        event = JobEvent.validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        raise Invalid(f"{field}: {first['msg']}" if field else first["msg"], field=field) from None
    data = event.model_dump(mode="json")
    if isinstance(event, BacktestDone):
        data["trades"] = [t.model_dump() for t in event.trades]  # typed for the insert
    kind, bot_id = await _store(principal, services).apply_event(
        uuid.UUID(job_id), _finite(data), await _model_hook(principal, services, event))
    if kind == "bot" and bot_id is not None:
        tenant = tenant_of(principal)
        args = (services.settings, services.db, tenant.id, tenant.slug, bot_id)
        if isinstance(event, Started):
            await package_bots.bot_started(*args)
        elif isinstance(event, Failed | Stopped):
            await package_bots.bot_job_ended(*args, "failed" if isinstance(event, Failed) else "stopped",
                                             event.message)

