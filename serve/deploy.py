"""The Serve applications as a cluster deploys them (KubeRay `RayService`).

On Kubernetes nobody calls `serve.run`: KubeRay hands ``serveConfigV2`` to the cluster and
Serve imports each application's ``import_path`` there. ``serve.deploy:gateway`` and
``serve.deploy:models`` are those import paths: built at import from the settings in the
environment (the pods get them from the ConfigMap and the Secret), without starting or
connecting to Ray. A cluster always uses external PostgreSQL and Redis, so a missing
``ATP_DATABASE_URL`` or ``ATP_REDIS_URL`` stops the import with the variable's name, as a
missing or placeholder secret does. `serve.serve_config` generates the config from here.
"""

from __future__ import annotations

from ray.serve import Application

from serve.app import build_app
from serve.models_app import build_models_app
from serve.runtime import cluster_settings


def _build() -> tuple[Application, Application]:
    settings = cluster_settings()
    return build_app(settings), build_models_app(settings)


gateway, models = _build()
