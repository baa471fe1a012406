"""The tenant's AI models: train (a Ray job, Tune when searching), the registry, predict.

Training runs as a job of the tenant like a backtest (`actors.training`), admitted within
the plan; its artifact comes back as the job's ``model`` event and is stored encrypted with
the tenant's data key. Predictions go to the multiplexed model endpoint
(`serve.models_app`) under a key the gateway builds from the credential's tenant.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from actors.market import read_bars
from actors.model_scores import call_endpoint, endpoint_handle
from actors.research import FINISHED, ResearchStore
from actors.training import parse_training
from models import registry
from models.features import FeatureSpec, compute_features
from models.registry import ModelRegistry
from serve.deps import ServicesDep, TraderDep, ViewerDep, tenant_of
from serve.routes.research import _admission, _Job, _json_body, _refresh
from tenancy.auth import Principal
from tenancy.roles import Role, require_role
from trading.errors import Invalid

router = APIRouter(prefix="/v1", tags=["models"])

MAX_WINDOWS = 1024


def _registry(principal: Principal, services: ServicesDep) -> ModelRegistry:
    tenant = tenant_of(principal)
    return ModelRegistry(services.db, tenant.id, tenant.slug)


@router.post("/models", status_code=status.HTTP_202_ACCEPTED)
async def train_model(request: Request, principal: TraderDep, services: ServicesDep) -> dict[str, Any]:
    """Train a new version of a model as a Ray job (a Tune search first when `search_space`).

    Body: ``name``, ``architecture`` (mlp, tcn), ``symbol``, ``from``, ``to`` (required);
    ``hyper``, ``features``, ``label`` {kind: direction|return, horizon}, ``lookback``,
    ``training`` {epochs, batch_size, lr, patience, weight_decay}, ``split`` {train,
    validation}, ``search_space``, ``num_trials``, ``concurrency``, ``cpus_per_trial``,
    ``memory_per_trial_mb``, ``seed``, ``data``, ``capital``, ``fee_bps``, ``resources``.
    """
    spec = parse_training(await _json_body(request))
    job = _Job("train", spec.config(), {}, spec.run.num_cpus, spec.run.memory_bytes, spec.total_cpus,
               spec.total_memory)
    admit, submit = await _admission(request, principal, services, job)
    tenant = tenant_of(principal)
    store = ResearchStore(services.db, tenant.id, tenant.slug)
    made: dict[str, int] = {}

    async def write_target(conn: Any, job_id: uuid.UUID) -> None:
        made["version"] = await registry.new_version(conn, spec.name, spec.architecture, spec.request(),
                                                     job_id, principal.actor)

    await store.launch_job("train", cpus=job.cpus, memory=job.memory, package=None, actor=principal.actor,
                           admit=admit, submit=submit, write_target=write_target)
    return await _registry(principal, services).version(spec.name, made["version"])


@router.get("/models")
async def list_models(principal: ViewerDep, services: ServicesDep) -> list[dict[str, Any]]:
    """Every model: its architecture, number of versions, production and latest ready version."""
    return await _registry(principal, services).models()


async def _refreshed(principal: Principal, services: ServicesDep, found: dict[str, Any]) -> dict[str, Any]:
    """A version still training whose job ended without a result becomes failed."""
    if found["status"] != "training":
        return found
    tenant = tenant_of(principal)
    store = ResearchStore(services.db, tenant.id, tenant.slug)
    job = await _refresh(store, services, await store.job(found["job_id"]))
    if job["status"] in FINISHED and job["status"] != "succeeded":
        async with services.db.tenant(tenant.id, tenant.slug) as uow:
            await registry.fail_version(uow.conn, job["id"], job["message"] or job["status"])
            await uow.commit()
        return await _registry(principal, services).version(found["name"], found["version"])
    return found


@router.get("/models/{name}/versions")
async def list_versions(name: str, principal: ViewerDep, services: ServicesDep) -> list[dict[str, Any]]:
    """Every version of a model: status, stage, metrics, the backtest of its signal."""
    versions = await _registry(principal, services).versions(name)
    return [await _refreshed(principal, services, v) for v in versions]


@router.get("/models/{name}/versions/{version}")
async def get_version(name: str, version: int, principal: ViewerDep, services: ServicesDep) -> dict[str, Any]:
    return await _refreshed(principal, services, await _registry(principal, services).version(name, version))


@router.get("/models/{name}/versions/{version}/artifact", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}})
async def get_artifact(name: str, version: int, principal: ViewerDep, services: ServicesDep) -> Response:
    """The version's artifact (weights and feature spec), decrypted and checked against its
    SHA-256 (in ``X-Artifact-SHA256``): for the tenant's traders, and for its jobs (a backtest
    of ``model_signal`` scores its bars in-process). A corrupt one is 409 ``model_corrupt``."""
    if principal.kind != "job":
        assert principal.role is not None
        require_role(principal.role, Role.TRADER)
    blob, sha256 = await _registry(principal, services).plain_artifact(
        services.settings.master_key_bytes, name, version)
    return Response(blob, media_type="application/octet-stream",
                    headers={"X-Artifact-SHA256": sha256, "Cache-Control": "no-store"})


class Promote(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: str = Field(default="production", description="production, staging or none")


@router.post("/models/{name}/versions/{version}/promote")
async def promote(name: str, version: int, body: Promote, principal: TraderDep, services: ServicesDep
                  ) -> dict[str, Any]:
    """Move a ready version to a stage; the production version is what `predict` serves."""
    return await _registry(principal, services).promote(name, version, body.stage)


class Predict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    windows: list[list[list[float]]] | None = Field(
        default=None, description="feature windows (lookback rows by features each), oldest row first")
    symbol: str | None = Field(default=None,
                               description="or: predict from the platform's bars of this symbol")
    at: datetime | None = Field(
        default=None, description="with symbol: the bars before this time (default: the latest stored bars)")
    version: int | None = Field(default=None, description="default: the production version")


@router.post("/models/{name}/predict")
async def predict(name: str, body: Predict, principal: ViewerDep, services: ServicesDep) -> dict[str, Any]:
    """Predictions of the tenant's model (``direction``: the probability of a rise; ``return``:
    the expected log return over the label's horizon): for the given windows, or for the latest
    window of a symbol's stored bars."""
    if (body.windows is None) == (body.symbol is None):
        raise Invalid("give either windows or symbol", field="windows")
    tenant = tenant_of(principal)
    version = await _registry(principal, services).resolve(name, body.version)
    handle = endpoint_handle(tenant.id, name, version)
    if body.windows is not None:
        if not 1 <= len(body.windows) <= MAX_WINDOWS:
            raise Invalid(f"windows must hold 1 to {MAX_WINDOWS} windows", field="windows")
        windows = body.windows
    else:
        shape = await call_endpoint(handle, "describe")
        spec = FeatureSpec.from_json(shape["features"])
        need = spec.warmup + shape["lookback"]
        at = body.at.astimezone(UTC) if body.at else None  # None: the latest stored bars
        async with services.db.tenant(tenant.id, tenant.slug) as uow:
            bars = await read_bars(uow.conn, body.symbol or "", None, at, need)
        if len(bars) < need:
            before = f" before {at.isoformat()}" if at else ""
            raise Invalid(f"{body.symbol} has {len(bars)} stored bars{before}; the model needs {need}",
                          field="symbol")
        features = compute_features(spec, bars)
        windows = [features[-shape["lookback"]:].tolist()]
    predictions = await call_endpoint(handle, "predict", windows)
    out: dict[str, Any] = {"model": name, "version": version, "predictions": predictions}
    if body.symbol is not None:
        out.update(symbol=body.symbol, at=bars[-1].ts.isoformat())
    return out

