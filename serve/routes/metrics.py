"""``GET /metrics``: the platform's metrics for Prometheus, cluster-wide (see `serve.metrics`).

Protected by its own token (``Authorization: Bearer <ATP_METRICS_TOKEN>``); without
that setting the route answers 404 exactly like a path that does not exist. It is not
counted in the metrics and not rate limited: it takes no tenant credential.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import dataclass, field

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.deps import ServicesDep
from serve.metrics import METRICS_PATH, MetricsRecorder
from serve.metrics_gauges import GaugeCache, Gauges, read_gauges
from serve.metrics_render import render
from serve.metrics_store import Counters, read_counters
from trading.errors import Unauthenticated

log = logging.getLogger(__name__)
router = APIRouter(tags=["operations"])

READ_SECONDS = 10.0


@dataclass
class GatewayMetrics:
    """A replica's metrics objects (on ``app.state.metrics``)."""

    recorder: MetricsRecorder = field(default_factory=MetricsRecorder)
    gauges: GaugeCache = field(default_factory=GaugeCache)


def _bearer(request: Request) -> str:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def _check_token(request: Request, services: ServicesDep) -> None:
    expected = services.settings.metrics_token
    if expected is None:
        raise StarletteHTTPException(status_code=404)  # the same answer as an unknown path
    supplied = _bearer(request)
    if not supplied:
        raise Unauthenticated("missing credential: send Authorization: Bearer <metrics token>",
                              code="missing_credential")
    if not hmac.compare_digest(supplied.encode(), expected.get_secret_value().encode()):
        raise Unauthenticated("not the metrics token", code="invalid_credential")


@router.get(METRICS_PATH, include_in_schema=False)
async def metrics(request: Request, services: ServicesDep) -> Response:
    """Request counters from Redis and tenant gauges from PostgreSQL, as Prometheus text."""
    _check_token(request, services)
    state: GatewayMetrics = request.app.state.metrics

    async def read() -> Gauges:
        return await read_gauges(services.db, services.redis,
                                 metering_interval=services.settings.metering_interval_seconds)

    counters_read, gauges_read = await asyncio.gather(
        asyncio.wait_for(read_counters(services.redis), READ_SECONDS),
        asyncio.wait_for(state.gauges.get(read), READ_SECONDS), return_exceptions=True)
    counters: Counters | None = None
    gauges: Gauges | None = None
    if isinstance(counters_read, BaseException):
        log.warning("metrics: redis unreadable (%s)", type(counters_read).__name__)
    else:
        counters = counters_read
    if isinstance(gauges_read, BaseException):
        log.warning("metrics: postgres unreadable (%s)", type(gauges_read).__name__)
    else:
        gauges = gauges_read
    return Response(render(counters, gauges), media_type=CONTENT_TYPE_LATEST)
