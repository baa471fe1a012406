"""Where tenants' models are served: the Serve application's names and the multiplex key.

Kept apart from the deployment (`serve.models_app`) so that actors, which must not import
`serve`, can call the endpoint too (a live bot trading on a model).
"""

from __future__ import annotations

import uuid

from trading.errors import Invalid

MODELS_APP = "models"
MODELS_DEPLOYMENT = "Models"


def model_key(tenant_id: uuid.UUID, name: str, version: int) -> str:
    """The multiplexed model id: ``<tenant id>/<model>@<version>`` (built from the credential only)."""
    return f"{tenant_id}/{name}@{version}"


def artifact_context(name: str, version: int) -> str:
    """The encryption context (associated data) of a model artifact."""
    return f"model:{name}@{version}"


def parse_key(key: str) -> tuple[uuid.UUID, str, int]:
    tenant, _, rest = key.partition("/")
    name, _, version = rest.rpartition("@")
    try:
        return uuid.UUID(tenant), name, int(version)
    except ValueError:
        raise Invalid(f"bad model key {key!r}", field="model") from None
