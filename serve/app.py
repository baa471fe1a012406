"""The composition root for Ray Serve: bind the gateway to its settings."""

from __future__ import annotations

from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from serve.api import create_api
from tenancy.settings import Settings

GATEWAY_APP = "gateway"


def build_app(settings: Settings, *, replicas: int | None = None,
              num_cpus: float | None = None) -> Application:
    """Return the gateway application: a FastAPI ingress built on each replica."""

    def build_api() -> FastAPI:  # a plain function: Serve calls it on each replica
        return create_api(settings)

    deployment = serve.deployment(
        name="Gateway",
        num_replicas=replicas or settings.gateway_replicas,
        ray_actor_options={"num_cpus": num_cpus if num_cpus is not None
                           else settings.gateway_num_cpus},
        max_ongoing_requests=200,
        health_check_period_s=10,
    )(serve.ingress(build_api)())
    return deployment.bind()
