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


@pytest.fixture(scope="session")
def gateway_url(ray_session: None, settings: Settings, db: Database) -> Iterator[str]:
    from ray import serve

    from serve.app import GATEWAY_APP, build_app

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                logging_config={"enable_access_log": False})
    try:
        serve.run(build_app(settings, num_cpus=0.25), name=GATEWAY_APP, route_prefix="/")
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
