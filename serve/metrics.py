"""The gateway's Prometheus metrics: their names, and what each request adds to them.

A scrape of ``GET /metrics`` reaches one gateway replica, so no replica may answer from
its own memory. Instead:

1. `MetricsMiddleware` hands every HTTP request (its tenant, route template, method,
   status, duration and error code) to the replica's `MetricsRecorder`: a few dictionary
   updates, no I/O.
2. `serve.metrics_store.MetricsFlusher` adds the recorder's deltas to a few Redis hashes
   every ``ATP_METRICS_FLUSH_SECONDS`` (and at shutdown), in one script call that Redis
   applies once even when a retry repeats it.
3. ``/metrics`` (`serve.routes.metrics`) renders the cluster-wide counters from Redis and
   the quota, usage, invoice and agent gauges from PostgreSQL (`serve.metrics_gauges`).

Labels: ``tenant`` is the slug of the tenant whose credential authenticated the request
(never a path or body field); it is ``""`` when there is none (no or a bad credential,
the operator token). ``route`` is the matched route's template (``/v1/bots/{bot_id}``);
a path that matches no route is ``unmatched``. ``method`` is one of the HTTP methods
in `METHODS` or ``OTHER``. WebSockets are not requests here: agents are counted by
their registry (``atp_agent_connections``).

When the recorder holds `max_series` distinct series (Redis has been unreachable for a
while and nothing could be flushed), requests that would add a new series are dropped
and counted in ``atp_metrics_dropped_total``.
"""

from __future__ import annotations

import bisect
import json
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

METRIC_NAMES: tuple[str, ...] = (
    "atp_http_requests_total",
    "atp_http_request_duration_seconds",
    "atp_http_errors_total",
    "atp_rate_limited_total",
    "atp_tenant_quota_used_ratio",
    "atp_tenant_over_quota",
    "atp_agent_connections",
    "atp_agent_last_seen_seconds",
    "atp_usage_cpu_seconds_total",
    "atp_usage_memory_gb_hours_total",
    "atp_usage_api_calls_total",
    "atp_invoice_amount_cents",
)
"""The platform's metrics, as dashboards and alerts name them."""

SELF_METRIC_NAMES: tuple[str, ...] = ("atp_metrics_dropped_total", "atp_metrics_source_up")
"""Metrics about the metrics pipeline itself (dropped observations, unreachable sources)."""

METRICS_PATH = "/metrics"
DURATION_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                                       10.0)
NO_TENANT = ""
UNMATCHED = "unmatched"
UNKNOWN_CODE = "unknown"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
RATE_LIMITED_CODE = "rate_limited"
SEP = "\x1f"  # joins label values into one Redis hash field; no label value contains it
MAX_SERIES = 20_000
_ERROR_SNIFF_BYTES = 8192
_CODE_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_BUCKET_LABELS = (*(repr(b) for b in DURATION_BUCKETS), "+Inf")


def bucket_label(seconds: float) -> str:
    """The ``le`` of the histogram bucket a duration falls in (buckets are not cumulative
    in storage; rendering accumulates them)."""
    return _BUCKET_LABELS[bisect.bisect_left(DURATION_BUCKETS, seconds)]


def field_of(*labels: str) -> str:
    return SEP.join(labels)


def labels_of(field_: str) -> list[str]:
    return field_.split(SEP)


@dataclass
class Deltas:
    """What one replica observed since its last flush; every map is field → increment."""

    requests: Counter[str] = field(default_factory=Counter)  # tenant|route|method|status
    buckets: Counter[str] = field(default_factory=Counter)  # tenant|route|le
    sums: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))  # tenant|route
    errors: Counter[str] = field(default_factory=Counter)  # tenant|route|code
    rate_limited: Counter[str] = field(default_factory=Counter)  # tenant
    dropped: int = 0

    def series(self) -> int:
        return (len(self.requests) + len(self.buckets) + len(self.sums) + len(self.errors)
                + len(self.rate_limited))

    def observations(self) -> int:
        return sum(self.requests.values())

    def __bool__(self) -> bool:
        return bool(self.requests or self.dropped)


class MetricsRecorder:
    """A replica's request metrics since the last flush (see the module docstring)."""

    def __init__(self, max_series: int = MAX_SERIES) -> None:
        self._max_series = max_series
        self._deltas = Deltas()

    def observe(self, *, tenant: str, route: str, method: str, status: int, seconds: float,
                error_code: str | None) -> None:
        """Count one finished request (`error_code` set when it answered an error)."""
        d = self._deltas
        request = field_of(tenant, route, method, str(status))
        series = field_of(tenant, route)
        bucket = field_of(series, bucket_label(seconds))
        error = field_of(series, error_code) if error_code is not None else None
        limited = error_code == RATE_LIMITED_CODE
        new = ((request not in d.requests) + (bucket not in d.buckets) + (series not in d.sums)
               + (error is not None and error not in d.errors)
               + (limited and tenant not in d.rate_limited))
        if new and d.series() + new > self._max_series:
            d.dropped += 1
            return
        d.requests[request] += 1
        d.buckets[bucket] += 1
        d.sums[series] += seconds
        if error is not None:
            d.errors[error] += 1
        if limited:
            d.rate_limited[tenant] += 1

    def drop(self, observations: int) -> None:
        """Count observations lost elsewhere (a batch Redis refused)."""
        self._deltas.dropped += observations

    def pending(self) -> tuple[int, int]:
        """(series, observations) held now."""
        return self._deltas.series(), self._deltas.observations()

    def take(self) -> Deltas:
        """Hand over everything observed so far and start afresh."""
        taken, self._deltas = self._deltas, Deltas()
        return taken


def tenant_label(scope: Scope) -> str:
    """The slug of the tenant the request's credential authenticated, or `NO_TENANT`."""
    principal = (scope.get("state") or {}).get("principal")
    tenant = getattr(principal, "tenant", None)
    slug = getattr(tenant, "slug", None)
    return slug if isinstance(slug, str) else NO_TENANT


def route_label(scope: Scope) -> str:
    """The matched route's template, or `UNMATCHED`."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED


def method_label(method: str) -> str:
    return method if method in METHODS else "OTHER"


def error_code_of(body: bytes) -> str:
    """``error.code`` of an error body, or `UNKNOWN_CODE` when it has none we can use."""
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return UNKNOWN_CODE
    return code if isinstance(code, str) and _CODE_RE.fullmatch(code) else UNKNOWN_CODE


class MetricsMiddleware:
    """ASGI middleware that reports every HTTP request to a `MetricsRecorder`.

    It reads the tenant and route from the scope after the app has run (the auth
    dependency puts the principal on ``request.state``; the router puts the route in the
    scope), and the error code from the first bytes of an error response's body.
    Requests to `METRICS_PATH` are not counted.
    """

    def __init__(self, app: ASGIApp, recorder: MetricsRecorder) -> None:
        self.app = app
        self.recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})  # shared with request.state downstream
        started = time.perf_counter()
        status = 0
        body = bytearray()

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and status >= 400 \
                    and len(body) < _ERROR_SNIFF_BYTES:
                body.extend(message.get("body", b"")[:_ERROR_SNIFF_BYTES - len(body)])
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        except Exception:
            self._record(scope, status or 500, started, "internal" if not status else None,
                         body)
            raise
        self._record(scope, status, started, None, body)

    def _record(self, scope: Scope, status: int, started: float, code: str | None,
                body: bytearray) -> None:
        route = route_label(scope)
        if route == METRICS_PATH:
            return
        if code is None and status >= 400:
            code = error_code_of(bytes(body))
        self.recorder.observe(tenant=tenant_label(scope), route=route,
                              method=method_label(str(scope.get("method", ""))), status=status,
                              seconds=time.perf_counter() - started, error_code=code)

