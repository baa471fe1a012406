"""One Ray session and one Serve gateway for every end-to-end test."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio

from tenancy.db import Database
from tenancy.settings import Settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_job_agent(timeout: float = 180) -> None:
    """Submit a no-op Ray job until the dashboard's job agent takes it: on a busy machine it
    answers "No available agent" for a while after Ray starts, longer than an HTTP call waits."""
    import sys
    import time

    import ray
    from ray.job_submission import JobSubmissionClient

    from actors.jobs import dashboard_url

    client = JobSubmissionClient(dashboard_url(ray.get_runtime_context().gcs_address))
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.submit_job(entrypoint=f"{sys.executable} -c pass", entrypoint_num_cpus=0)
            return
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(1)


@pytest.fixture(scope="session")
def gateway_url(ray_session: None, settings: Settings, db: Database) -> Iterator[str]:
    from ray import serve

    from models.serving import MODELS_APP
    from serve.app import GATEWAY_APP, build_app
    from serve.models_app import build_models_app

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                logging_config={"enable_access_log": False})
    try:
        serve.run(build_models_app(settings, num_cpus=0.1, max_replicas=1), name=MODELS_APP,
                  route_prefix=None)
        serve.run(build_app(settings, num_cpus=0.25), name=GATEWAY_APP, route_prefix="/")
        _wait_for_job_agent()
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


@pytest_asyncio.fixture(scope="session")
async def http(gateway_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def operator_headers(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.secret('operator_token')}"}
