"""Render the metrics in Prometheus' text exposition format (with prometheus_client).

Counters and the histogram come from Redis (`serve.metrics_store.Counters`), gauges and
usage counters from PostgreSQL (`serve.metrics_gauges.Gauges`). A source that could not
be read is left out, and ``atp_metrics_source_up{source}`` says so (0), so a scrape still
succeeds with what is known and an alert can fire on the missing part.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from serve.metrics import DURATION_BUCKETS
from serve.metrics_gauges import Gauges
from serve.metrics_store import Counters

GB_SECONDS_PER_GB_HOUR = 3600


def _counter_families(c: Counters) -> Iterator[Metric]:
    requests = CounterMetricFamily(
        "atp_http_requests", "HTTP requests answered by the gateway",
        labels=["tenant", "route", "method", "status"])
    for labels, value in sorted(c.requests.items()):
        requests.add_metric(list(labels), value)
    yield requests

    duration = HistogramMetricFamily(
        "atp_http_request_duration_seconds", "Time from request to the end of the response",
        labels=["tenant", "route"])
    per_series: dict[tuple[str, ...], dict[float, int]] = defaultdict(dict)
    for labels, count in c.buckets.items():
        per_series[labels[:-1]][float(labels[-1])] = count
    for series, buckets in sorted(per_series.items()):
        cumulative: list[tuple[str, float]] = []
        running = 0
        for bound in sorted({*DURATION_BUCKETS, math.inf, *buckets}):  # every bucket, every series
            running += buckets.get(bound, 0)
            cumulative.append((floatToGoString(bound), running))
        duration.add_metric(list(series), cumulative, c.sums.get(series, 0.0))
    yield duration

    errors = CounterMetricFamily(
        "atp_http_errors", "Error responses by the error body's code",
        labels=["tenant", "route", "code"])
    for labels, value in sorted(c.errors.items()):
        errors.add_metric(list(labels), value)
    yield errors

    limited = CounterMetricFamily(
        "atp_rate_limited", "Requests refused by the plan's rate limit (429 rate_limited)",
        labels=["tenant"])
    for labels, value in sorted(c.rate_limited.items()):
        limited.add_metric(list(labels), value)
    yield limited

    yield CounterMetricFamily("atp_metrics_dropped",
                              "Requests a replica could not add to the metrics",
                              value=c.dropped)


def _gauge_families(g: Gauges, now: float) -> Iterator[Metric]:
    ratio = GaugeMetricFamily(
        "atp_tenant_quota_used_ratio", "Used / allowed by the tenant's plan (absent: unlimited"
        " or not known)", labels=["tenant", "resource"])
    over = GaugeMetricFamily(
        "atp_tenant_over_quota", "1 while the tenant is over its plan's allowance",
        labels=["tenant", "resource"])
    for q in g.quotas:
        value = q.ratio
        if value is not None:
            ratio.add_metric([q.tenant, q.resource], value)
        over.add_metric([q.tenant, q.resource], 1.0 if q.over else 0.0)
    yield ratio
    yield over

    connections = GaugeMetricFamily(
        "atp_agent_connections", "Local agents connected and heartbeating", labels=["tenant"])
    for tenant, count in sorted(g.agent_connections.items()):
        connections.add_metric([tenant], count)
    yield connections
    last_seen = GaugeMetricFamily(
        "atp_agent_last_seen_seconds", "Seconds since an agent was last heard from",
        labels=["tenant", "agent"])
    for (tenant, agent), at in sorted(g.agent_last_seen.items()):
        last_seen.add_metric([tenant, agent], max(0.0, now - at))
    yield last_seen

    meters = (("cpu_seconds", "atp_usage_cpu_seconds", "Metered CPU-seconds", 1),
              ("memory_gb_seconds", "atp_usage_memory_gb_hours", "Metered memory GB-hours",
               GB_SECONDS_PER_GB_HOUR),
              ("api_calls", "atp_usage_api_calls", "Metered API calls", 1))
    for meter, name, help_text, divisor in meters:
        family = CounterMetricFamily(name, help_text + " (the usage ledger)", labels=["tenant"])
        for (tenant, m), quantity in sorted(g.usage.items()):
            if m == meter:
                family.add_metric([tenant], float(quantity) / divisor)
        yield family

    invoices = GaugeMetricFamily(
        "atp_invoice_amount_cents", "Total of the tenant's invoices by status",
        labels=["tenant", "status"])
    for (tenant, status), cents in sorted(g.invoices.items()):
        invoices.add_metric([tenant, status], cents)
    yield invoices


class _Snapshot(Collector):
    def __init__(self, counters: Counters | None, gauges: Gauges | None, now: float) -> None:
        self._counters, self._gauges, self._now = counters, gauges, now

    def collect(self) -> Iterator[Metric]:
        if self._counters is not None:
            yield from _counter_families(self._counters)
        if self._gauges is not None:
            yield from _gauge_families(self._gauges, self._now)
        up = GaugeMetricFamily("atp_metrics_source_up",
                               "1 when /metrics could read the source", labels=["source"])
        up.add_metric(["redis"], float(self._counters is not None))
        up.add_metric(["postgres"], float(self._gauges is not None))
        yield up


def render(counters: Counters | None, gauges: Gauges | None, *, now: float | None = None
           ) -> bytes:
    """The exposition text; a source given as None is reported down and left out. Agents'
    last-seen ages are taken at `now` (Unix time; default: the present)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(counters, gauges, time.time() if now is None else now))
    return generate_latest(registry)
