"""The model endpoint: one Ray Serve deployment serving every tenant's models, multiplexed.

A model is addressed by ``<tenant id>/<model name>@<version>``, a key only the gateway
builds, from the authenticated tenant: a tenant can never name another tenant's model.
Each replica keeps at most `MODELS_PER_REPLICA` models (least recently used evicted, by
Serve); requests for one model are routed to a replica that has it loaded when one does.

Loading reads the version's encrypted artifact from the tenant's schema, decrypts it with
the tenant's data key and checks its SHA-256 before anything is unpickled (weights only):
a mismatch marks the version ``bad`` and answers ``model_corrupt``. Predictions are
batched (`@serve.batch`, split by model by Serve) and run on the GPU when the replica has
one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from ray import serve

from models.registry import ModelRegistry
from models.serving import MODELS_DEPLOYMENT, parse_key
from tenancy.db import Database
from tenancy.settings import Settings
from trading.errors import NotFound

if TYPE_CHECKING:  # torch is imported by the model replicas only, never by the gateway
    from models.artifacts import LoadedModel

MODELS_PER_REPLICA = 8
MAX_BATCH = 64


class ModelServer:
    """The deployment's replica: loads tenants' models on demand and predicts in batches."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._db: Database | None = None

    def _database(self) -> Database:
        if self._db is None:
            self._db = Database.from_url(self._settings.database_url or "", pool_size=2)
        return self._db

    @serve.multiplexed(max_num_models_per_replica=MODELS_PER_REPLICA)
    async def get_model(self, key: str) -> LoadedModel:
        from models.artifacts import ModelCorrupt, load_artifact

        tenant_id, name, version = parse_key(key)
        db = self._database()
        async with db.platform() as uow:
            from sqlalchemy import text

            slug = (await uow.conn.execute(text("SELECT slug FROM platform.tenants WHERE id = :t"),
                                           {"t": tenant_id})).scalar_one_or_none()
        if slug is None:
            raise NotFound("no such tenant", code="model_not_found")
        registry = ModelRegistry(db, tenant_id, slug)
        blob, sha256 = await registry.plain_artifact(self._settings.master_key_bytes, name, version)
        try:
            return load_artifact(blob, sha256)
        except ModelCorrupt as exc:
            await registry.mark_bad(name, version, exc.message)
            raise ModelCorrupt(f"{name}@{version} is corrupt ({exc.message}); it is marked bad") from None

    async def predict(self, windows: list[list[list[float]]]) -> list[float]:
        """Predict for each window (lookback rows by features) of one request."""
        return await self._batched(np.asarray(windows, dtype=np.float32))

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=0.002)
    async def _batched(self, requests: list[np.ndarray]) -> list[Any]:
        model = await self.get_model(serve.get_multiplexed_model_id())
        sizes = [len(r) for r in requests]
        predictions = model.predict(np.concatenate(requests)) if sum(sizes) else np.zeros(0)
        out, start = [], 0
        for size in sizes:
            out.append([float(p) for p in predictions[start:start + size]])
            start += size
        return out

    async def describe(self) -> dict[str, Any]:
        """The model's input shape and feature spec (for callers that build windows)."""
        model = await self.get_model(serve.get_multiplexed_model_id())
        return {"lookback": model.lookback, "features": model.spec.to_json(),
                "label": {"kind": model.kind, "horizon": model.horizon}}


def build_models_app(settings: Settings, *, num_cpus: float = 0.25, max_replicas: int = 4) -> Any:
    """The model endpoint as a Serve application (no HTTP route: the gateway calls it)."""
    deployment = serve.deployment(
        name=MODELS_DEPLOYMENT,
        ray_actor_options={"num_cpus": num_cpus},
        max_ongoing_requests=64,
        autoscaling_config={"min_replicas": 1, "max_replicas": max_replicas,
                            "target_ongoing_requests": 16},
        health_check_period_s=10,
    )(ModelServer)
    return deployment.bind(settings)
