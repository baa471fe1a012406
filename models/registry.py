"""The per-tenant model registry: models, their versions, stages and encrypted artifacts.

Everything lives in the tenant's schema (``models``, ``model_versions``: migration t0006)
and is read and written in tenant units of work. A version is made by a training job:
`new_version` writes it (status ``training``) in the job's launch transaction; the job's
result is stored with `finish_version` (the artifact already encrypted by the caller with
the tenant's data key; the SHA-256 is of the plain artifact) or `fail_version`. Stages:
``staging`` and ``production`` (one production version per model: promoting a version to
production moves the previous one back to ``staging``). A version whose artifact fails its
checksum when loaded is marked ``bad`` and is never served again.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from models.serving import artifact_context
from tenancy.db import TenantScoped
from tenancy.keys import DecryptionError, load_cipher
from trading.errors import Conflict, Invalid, NotFound
from trading.strategy import NAME_RE

STAGES = ("none", "staging", "production")
_VERSION_COLUMNS = ("v.version, v.job_id, v.status, v.stage, v.request, v.params, v.metrics, v.backtest,"
                    " v.artifact_sha256, v.size_bytes, v.error, v.created_by, v.created_at, v.finished_at,"
                    " v.promoted_at")
_JSON = {"request", "params", "metrics", "backtest"}


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise Invalid("a model name is lower-case snake case (letters, digits, underscores), at most 64",
                      field="name")
    return name


def _row(row: Any) -> dict[str, Any]:
    return {k: json.loads(v) if k in _JSON and isinstance(v, str) else v for k, v in row._asdict().items()}


async def new_version(conn: AsyncConnection, name: str, architecture: str, request: Mapping[str, Any],
                      job_id: uuid.UUID, actor: str) -> int:
    """Create the model if new and its next version (status ``training``) in `conn`'s transaction.

    A model keeps its architecture: training another under the same name is a 409.
    """
    model = (await conn.execute(text(
        "INSERT INTO models (id, name, architecture, created_by) VALUES (:id, :n, :a, :actor)"
        " ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id, architecture"),
        {"id": uuid.uuid4(), "n": name, "a": architecture, "actor": actor})).one()
    if model.architecture != architecture:
        raise Conflict(f"model {name!r} is a {model.architecture}; train a {architecture} under another name",
                       code="model_architecture", field="architecture")
    await conn.execute(text("SELECT id FROM models WHERE id = :m FOR UPDATE"), {"m": model.id})
    version = (await conn.execute(text(
        "SELECT coalesce(max(version), 0) + 1 FROM model_versions WHERE model_id = :m"),
        {"m": model.id})).scalar_one()
    await conn.execute(text(
        "INSERT INTO model_versions (model_id, version, job_id, status, request, created_by)"
        " VALUES (:m, :v, :j, 'training', CAST(:r AS jsonb), :actor)"),
        {"m": model.id, "v": version, "j": job_id, "r": json.dumps(request), "actor": actor})
    return int(version)


async def version_of_job(conn: AsyncConnection, job_id: uuid.UUID) -> tuple[str, int]:
    """The (model name, version) a training job makes."""
    row = (await conn.execute(text(
        "SELECT m.name, v.version FROM model_versions v JOIN models m ON m.id = v.model_id"
        " WHERE v.job_id = :j"), {"j": job_id})).one()
    return row.name, int(row.version)


async def finish_version(conn: AsyncConnection, job_id: uuid.UUID, *, encrypted: bytes, sha256: str,
                         size: int, params: Mapping[str, Any], metrics: Mapping[str, Any],
                         backtest: Mapping[str, Any] | None) -> None:
    """Store a training job's result: the version becomes ``ready``."""
    await conn.execute(text(
        "UPDATE model_versions SET status = 'ready', artifact = :a, artifact_sha256 = :s, size_bytes = :n,"
        " params = CAST(:p AS jsonb), metrics = CAST(:m AS jsonb), backtest = CAST(:b AS jsonb),"
        " finished_at = now() WHERE job_id = :j AND status = 'training'"),
        {"a": encrypted, "s": sha256, "n": size, "p": json.dumps(params), "m": json.dumps(metrics),
         "b": json.dumps(backtest), "j": job_id})


async def fail_version(conn: AsyncConnection, job_id: uuid.UUID, error: str) -> None:
    await conn.execute(text(
        "UPDATE model_versions SET status = 'failed', error = :e, finished_at = now()"
        " WHERE job_id = :j AND status = 'training'"), {"e": error, "j": job_id})


class ModelRegistry(TenantScoped):
    """One tenant's models and versions."""

    async def models(self) -> builtins.list[dict[str, Any]]:
        async with self._uow() as uow:
            rows = (await uow.conn.execute(text(
                "SELECT m.name, m.architecture, m.created_at, count(v.version) AS versions,"
                " max(v.version) FILTER (WHERE v.stage = 'production') AS production,"
                " max(v.version) FILTER (WHERE v.status = 'ready') AS latest_ready"
                " FROM models m LEFT JOIN model_versions v ON v.model_id = m.id"
                " GROUP BY m.id ORDER BY m.name"))).all()
        return [r._asdict() for r in rows]

    async def versions(self, name: str) -> builtins.list[dict[str, Any]]:
        async with self._uow() as uow:
            model = await _model(uow.conn, name)
            rows = (await uow.conn.execute(text(
                f"SELECT {_VERSION_COLUMNS} FROM model_versions v WHERE v.model_id = :m ORDER BY v.version"),
                {"m": model.id})).all()
        return [{"name": name, "architecture": model.architecture, **_row(r)} for r in rows]

    async def version(self, name: str, version: int) -> dict[str, Any]:
        async with self._uow() as uow:
            model = await _model(uow.conn, name)
            row = await _version(uow.conn, model.id, name, version)
        return {"name": name, "architecture": model.architecture, **_row(row)}

    async def promote(self, name: str, version: int, stage: str) -> dict[str, Any]:
        """Move a ready version to `stage`; a new production version sends the old one to staging."""
        if stage not in STAGES:
            raise Invalid(f"stage must be one of {', '.join(STAGES)}", field="stage")
        async with self._uow() as uow:
            model = await _model(uow.conn, name, lock=True)
            row = await _version(uow.conn, model.id, name, version)
            if row.status != "ready":
                raise Conflict(f"{name}@{version} is {row.status}; only a ready version is promoted",
                               code="model_not_ready", field="version")
            if stage == "production":
                await uow.conn.execute(text(
                    "UPDATE model_versions SET stage = 'staging' WHERE model_id = :m AND stage = 'production'"
                    " AND version <> :v"), {"m": model.id, "v": version})
            await uow.conn.execute(text(
                "UPDATE model_versions SET stage = :s, promoted_at = now()"
                " WHERE model_id = :m AND version = :v"),
                {"s": stage, "m": model.id, "v": version})
            await uow.commit()
        return await self.version(name, version)

    async def resolve(self, name: str, version: int | None) -> int:
        """The version to serve: the one asked for, else the production one (404 without)."""
        async with self._uow() as uow:
            model = await _model(uow.conn, name)
            if version is not None:
                row = await _version(uow.conn, model.id, name, version)
            else:
                row = (await uow.conn.execute(text(
                    f"SELECT {_VERSION_COLUMNS} FROM model_versions v"
                    " WHERE v.model_id = :m AND v.stage = 'production'"), {"m": model.id})).first()
                if row is None:
                    raise NotFound(f"model {name!r} has no production version: promote one, or ask for a "
                                   "version", code="model_not_promoted", field="version")
        if row.status == "bad":
            raise Conflict(f"{name}@{row.version} is marked bad: {row.error}", code="model_corrupt")
        if row.status != "ready":
            raise Conflict(f"{name}@{row.version} is {row.status}", code="model_not_ready", field="version")
        return int(row.version)

    async def artifact(self, name: str, version: int) -> tuple[bytes, str]:
        """The encrypted artifact and the SHA-256 of the plain one."""
        async with self._uow() as uow:
            model = await _model(uow.conn, name)
            row = (await uow.conn.execute(text(
                "SELECT status, artifact, artifact_sha256, error FROM model_versions"
                " WHERE model_id = :m AND version = :v"), {"m": model.id, "v": version})).first()
        if row is None or row.artifact is None:
            raise NotFound(f"no artifact for {name}@{version}", code="model_not_found")
        if row.status == "bad":
            raise Conflict(f"{name}@{version} is marked bad: {row.error}", code="model_corrupt")
        return bytes(row.artifact), str(row.artifact_sha256)

    async def plain_artifact(self, master_key: bytes, name: str, version: int) -> tuple[bytes, str]:
        """The artifact decrypted with the tenant's data key and checked against its SHA-256, and
        that checksum. One that does not decrypt or match is marked bad: 409 ``model_corrupt``."""
        encrypted, sha256 = await self.artifact(name, version)
        async with self._db.platform() as uow:
            cipher = await load_cipher(uow.conn, master_key, self._tenant_id)
        try:
            blob = cipher.decrypt(encrypted, artifact_context(name, version))
        except DecryptionError:
            reason = "the artifact does not decrypt"
        else:
            if hashlib.sha256(blob).hexdigest() == sha256:
                return blob, sha256
            reason = "its checksum does not match"
        await self.mark_bad(name, version, reason)
        raise Conflict(f"{name}@{version} is corrupt ({reason}); it is marked bad", code="model_corrupt")

    async def mark_bad(self, name: str, version: int, reason: str) -> None:
        async with self._uow() as uow:
            model = await _model(uow.conn, name)
            await uow.conn.execute(text(
                "UPDATE model_versions SET status = 'bad', stage = 'none', error = :e"
                " WHERE model_id = :m AND version = :v"), {"e": reason, "m": model.id, "v": version})
            await uow.commit()


async def _model(conn: AsyncConnection, name: str, *, lock: bool = False) -> Any:
    row = (await conn.execute(text(
        f"SELECT id, architecture FROM models WHERE name = :n{' FOR UPDATE' if lock else ''}"),
        {"n": name})).first()
    if row is None:
        raise NotFound(f"no model {name!r}", code="model_not_found")
    return row


async def _version(conn: AsyncConnection, model_id: uuid.UUID, name: str, version: int) -> Any:
    row = (await conn.execute(text(
        f"SELECT {_VERSION_COLUMNS} FROM model_versions v WHERE v.model_id = :m AND v.version = :v"),
        {"m": model_id, "v": version})).first()
    if row is None:
        raise NotFound(f"no version {version} of model {name!r}", code="model_version_not_found")
    return row
