"""Gateway metrics without services: the recorder, the middleware's labels, the rendering."""

from __future__ import annotations

import ast
import base64
import os
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.testclient import TestClient

from serve.errors import install_error_handlers
from serve.metrics import (
    DURATION_BUCKETS,
    METRIC_NAMES,
    MetricsMiddleware,
    MetricsRecorder,
    bucket_label,
    error_code_of,
    field_of,
)
from serve.metrics_gauges import Gauges, Quota
from serve.metrics_render import render
from serve.metrics_store import Counters
from tenancy.settings import SettingsError, load_settings
from tests.prometheus_text import families, sample_value
from trading.errors import NotFound, RateLimited

# -- the recorder ------------------------------------------------------------------------------

def test_bucket_label_puts_a_duration_in_the_first_bucket_that_holds_it() -> None:
    assert bucket_label(0.0) == "0.005"
    assert bucket_label(0.005) == "0.005"  # le: less than or equal
    assert bucket_label(0.0051) == "0.01"
    assert bucket_label(10.0) == "10.0"
    assert bucket_label(10.5) == "+Inf"


def test_recorder_counts_requests_buckets_sums_errors_and_rate_limits() -> None:
    recorder = MetricsRecorder()
    recorder.observe(tenant="t-a", route="/v1/me", method="GET", status=200, seconds=0.002,
                     error_code=None)
    recorder.observe(tenant="t-a", route="/v1/me", method="GET", status=200, seconds=0.3,
                     error_code=None)
    recorder.observe(tenant="t-a", route="/v1/me", method="GET", status=429, seconds=0.001,
                     error_code="rate_limited")
    recorder.observe(tenant="", route="unmatched", method="GET", status=404, seconds=0.001,
                     error_code="not_found")
    deltas = recorder.take()
    assert deltas.requests == {field_of("t-a", "/v1/me", "GET", "200"): 2,
                               field_of("t-a", "/v1/me", "GET", "429"): 1,
                               field_of("", "unmatched", "GET", "404"): 1}
    assert deltas.buckets[field_of("t-a", "/v1/me", "0.005")] == 2
    assert deltas.buckets[field_of("t-a", "/v1/me", "0.5")] == 1
    assert deltas.sums[field_of("t-a", "/v1/me")] == pytest.approx(0.303)
    assert deltas.errors == {field_of("t-a", "/v1/me", "rate_limited"): 1,
                             field_of("", "unmatched", "not_found"): 1}
    assert deltas.rate_limited == {"t-a": 1}
    assert deltas.observations() == 4 and deltas.dropped == 0
    assert not recorder.take()  # taken: the recorder starts afresh


def test_recorder_drops_new_series_beyond_its_bound_and_counts_them() -> None:
    recorder = MetricsRecorder(max_series=3)  # one request series + bucket + sum
    for _ in range(5):
        recorder.observe(tenant="t-a", route="/v1/me", method="GET", status=200, seconds=0.001,
                         error_code=None)
    recorder.observe(tenant="t-b", route="/v1/me", method="GET", status=200, seconds=0.001,
                     error_code=None)  # a new series: no room
    recorder.observe(tenant="t-a", route="/v1/me", method="GET", status=200, seconds=0.001,
                     error_code=None)  # existing series still count
    deltas = recorder.take()
    assert deltas.observations() == 6 and deltas.dropped == 1
    assert deltas.series() == 3


@pytest.mark.parametrize(("body", "code"), [
    (b'{"error": {"code": "not_found", "message": "x", "field": null}}', "not_found"),
    (b'{"status": "down"}', "unknown"),
    (b"not json", "unknown"),
    (b'{"error": {"code": "Has Spaces"}}', "unknown"),
    (b'{"error": "flat"}', "unknown"),
])
def test_error_code_comes_from_the_error_body(body: bytes, code: str) -> None:
    assert error_code_of(body) == code


# -- the middleware ----------------------------------------------------------------------------

def _app(recorder: MetricsRecorder) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, recorder=recorder)
    router = APIRouter(prefix="/v1")

    @router.get("/bots/{bot_id}")
    async def get_bot(bot_id: str, request: Request) -> dict[str, str]:
        request.state.principal = SimpleNamespace(tenant=SimpleNamespace(slug="t-acme"))
        if bot_id == "missing":
            raise NotFound("no bot missing", field="bot_id")
        if bot_id == "busy":
            raise RateLimited("slow down", retry_after=1)
        if bot_id == "boom":
            raise RuntimeError("boom")
        return {"id": bot_id}

    @router.get("/public")
    async def public() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/metrics")
    async def metrics() -> dict[str, str]:
        return {"not": "counted"}

    app.include_router(router)
    return app


def test_middleware_labels_requests_by_credential_tenant_and_route_template() -> None:
    recorder = MetricsRecorder()
    client = TestClient(_app(recorder), raise_server_exceptions=False)
    assert client.get("/v1/bots/1").status_code == 200
    assert client.get("/v1/bots/2").status_code == 200
    assert client.get("/v1/bots/missing").status_code == 404
    assert client.get("/v1/bots/busy").status_code == 429
    assert client.get("/v1/bots/boom").status_code == 500
    assert client.post("/v1/bots/1").status_code == 405
    assert client.get("/v1/public").status_code == 200
    assert client.get("/no/such/path/123").status_code == 404
    assert client.request("BREW", "/v1/public").status_code == 405
    assert client.get("/metrics").status_code == 200
    deltas = recorder.take()
    route = "/v1/bots/{bot_id}"
    assert deltas.requests == {
        field_of("t-acme", route, "GET", "200"): 2,
        field_of("t-acme", route, "GET", "404"): 1,
        field_of("t-acme", route, "GET", "429"): 1,
        field_of("t-acme", route, "GET", "500"): 1,
        field_of("", route, "POST", "405"): 1,  # refused before any credential was read
        field_of("", "/v1/public", "GET", "200"): 1,
        field_of("", "/v1/public", "OTHER", "405"): 1,
        field_of("", "unmatched", "GET", "404"): 1,
    }
    assert deltas.errors == {
        field_of("t-acme", route, "not_found"): 1,
        field_of("t-acme", route, "rate_limited"): 1,
        field_of("t-acme", route, "internal"): 1,
        field_of("", route, "method_not_allowed"): 1,
        field_of("", "/v1/public", "method_not_allowed"): 1,
        field_of("", "unmatched", "not_found"): 1,
    }
    assert deltas.rate_limited == {"t-acme": 1}
    assert sum(v for k, v in deltas.buckets.items() if k.startswith(field_of("t-acme", route)))\
        == 5


# -- rendering ---------------------------------------------------------------------------------

def _counters() -> Counters:
    route = "/v1/bots/{bot_id}"
    return Counters(
        requests={("t-a", route, "GET", "200"): 7, ("t-a", route, "GET", "404"): 2},
        buckets={("t-a", route, "0.005"): 4, ("t-a", route, "0.25"): 3,
                 ("t-a", route, "+Inf"): 2},
        sums={("t-a", route): 21.5},
        errors={("t-a", route, "not_found"): 2},
        rate_limited={("t-a",): 3},
        dropped=5)


def _gauges() -> Gauges:
    return Gauges(
        quotas=[Quota("t-a", "bots", 2.0, 5.0, False), Quota("t-a", "cpu", None, 4.0, False),
                Quota("t-a", "memory", 9e9, 8e9, True), Quota("t-a", "api_calls", 3.0, None, False)],
        agent_connections={"t-a": 1, "t-b": 0},
        agent_last_seen={("t-a", "4b7f0a53-93a5-4ac1-9f53-5a0bcbd0ff10"): 1_750_000_000.5},
        usage={("t-a", "cpu_seconds"): Decimal("12.5"), ("t-a", "memory_gb_seconds"): Decimal(7200),
               ("t-a", "api_calls"): Decimal(42)},
        invoices={("t-a", "paid"): 4900, ("t-a", "finalised"): 19930})


def test_render_exposes_every_name_with_the_values_given() -> None:
    parsed = families(render(_counters(), _gauges(), now=1_750_000_030.0))
    route = "/v1/bots/{bot_id}"
    exposed = {f.name + ("_total" if f.type == "counter" else "") for f in parsed.values()}
    assert set(METRIC_NAMES) <= exposed
    requests = parsed["atp_http_requests"]
    assert requests.type == "counter"
    assert sample_value(requests, "atp_http_requests_total", tenant="t-a", route=route,
                        method="GET", status="404") == 2
    duration = parsed["atp_http_request_duration_seconds"]
    assert duration.type == "histogram"
    labels = {"tenant": "t-a", "route": route}
    buckets = {s.labels["le"]: s.value for s in duration.samples
               if s.name.endswith("_bucket") and s.labels["tenant"] == "t-a"}
    assert len(buckets) == len(DURATION_BUCKETS) + 1  # every bucket, zeros included
    assert (buckets["0.005"], buckets["0.1"], buckets["0.25"], buckets["10.0"], buckets["+Inf"]) \
        == (4, 4, 7, 7, 9)
    assert sample_value(duration, "atp_http_request_duration_seconds_count", **labels) == 9
    assert sample_value(duration, "atp_http_request_duration_seconds_sum", **labels) == 21.5
    assert sample_value(parsed["atp_http_errors"], "atp_http_errors_total", tenant="t-a",
                        route=route, code="not_found") == 2
    assert sample_value(parsed["atp_rate_limited"], "atp_rate_limited_total", tenant="t-a") == 3
    assert sample_value(parsed["atp_metrics_dropped"], "atp_metrics_dropped_total") == 5

    ratio, over = parsed["atp_tenant_quota_used_ratio"], parsed["atp_tenant_over_quota"]
    assert sample_value(ratio, "atp_tenant_quota_used_ratio", tenant="t-a", resource="bots") == 0.4
    assert sample_value(ratio, "atp_tenant_quota_used_ratio", tenant="t-a",
                        resource="memory") == 1.125
    assert {s.labels["resource"] for s in ratio.samples} == {"bots", "memory"}  # unknown, unlimited
    assert [s.labels["resource"] for s in over.samples if s.value == 1] == ["memory"]
    assert len(over.samples) == 4
    assert sample_value(parsed["atp_agent_connections"], "atp_agent_connections",
                        tenant="t-b") == 0
    assert sample_value(parsed["atp_agent_last_seen_seconds"], "atp_agent_last_seen_seconds",
                        tenant="t-a", agent="4b7f0a53-93a5-4ac1-9f53-5a0bcbd0ff10") \
        == 29.5  # seconds since, at render time
    assert sample_value(parsed["atp_usage_cpu_seconds"], "atp_usage_cpu_seconds_total",
                        tenant="t-a") == 12.5
    assert sample_value(parsed["atp_usage_memory_gb_hours"], "atp_usage_memory_gb_hours_total",
                        tenant="t-a") == 2.0
    assert sample_value(parsed["atp_usage_api_calls"], "atp_usage_api_calls_total",
                        tenant="t-a") == 42
    assert sample_value(parsed["atp_invoice_amount_cents"], "atp_invoice_amount_cents",
                        tenant="t-a", status="finalised") == 19930
    up = parsed["atp_metrics_source_up"]
    assert sample_value(up, "atp_metrics_source_up", source="redis") == 1
    assert sample_value(up, "atp_metrics_source_up", source="postgres") == 1


def test_render_leaves_out_a_source_that_could_not_be_read() -> None:
    parsed = families(render(None, _gauges()))
    assert "atp_http_requests" not in parsed and "atp_tenant_over_quota" in parsed
    assert sample_value(parsed["atp_metrics_source_up"], "atp_metrics_source_up",
                        source="redis") == 0
    parsed = families(render(_counters(), None))
    assert "atp_http_requests" in parsed and "atp_tenant_over_quota" not in parsed
    assert sample_value(parsed["atp_metrics_source_up"], "atp_metrics_source_up",
                        source="postgres") == 0


def test_label_values_are_escaped() -> None:
    counters = Counters(requests={('t-a', 'unmatched', 'GET', '200'): 1},
                        errors={("", 'a"b\\c\nd', "x"): 1})
    parsed = families(render(counters, None))
    assert sample_value(parsed["atp_http_errors"], "atp_http_errors_total", tenant="",
                        route='a"b\\c\nd', code="x") == 1


def test_quota_ratio_of_a_zero_allowance() -> None:
    assert Quota("t", "bots", 0.0, 0.0, False).ratio == 0.0
    assert Quota("t", "bots", 1.0, 0.0, True).ratio == float("inf")
    assert Quota("t", "bots", 1.0, None, False).ratio is None


# -- names and settings ------------------------------------------------------------------------

def test_the_metric_names_are_the_agreed_ones() -> None:
    assert METRIC_NAMES == (
        "atp_http_requests_total", "atp_http_request_duration_seconds", "atp_http_errors_total",
        "atp_rate_limited_total", "atp_tenant_quota_used_ratio", "atp_tenant_over_quota",
        "atp_agent_connections", "atp_agent_last_seen_seconds", "atp_usage_cpu_seconds_total",
        "atp_usage_memory_gb_hours_total", "atp_usage_api_calls_total", "atp_invoice_amount_cents")


_SECRETS = {"jwt_secret": "j" * 40, "operator_token": "o" * 40,
            "master_key": base64.b64encode(bytes(32)).decode()}


def test_metrics_token_is_optional_secret_and_refused_as_a_placeholder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("ATP_")]:
        monkeypatch.delenv(name)
    assert load_settings(data_dir=tmp_path, **_SECRETS).metrics_token is None
    monkeypatch.setenv("ATP_METRICS_TOKEN", "")
    assert load_settings(data_dir=tmp_path, **_SECRETS).metrics_token is None  # empty: unset
    monkeypatch.setenv("ATP_METRICS_TOKEN", "m" * 40)
    settings = load_settings(data_dir=tmp_path, **_SECRETS)
    assert settings.secret("metrics_token") == "m" * 40 and "m" * 40 not in repr(settings)
    monkeypatch.setenv("ATP_METRICS_TOKEN", "changeme")
    with pytest.raises(SettingsError) as info:
        load_settings(data_dir=tmp_path, **_SECRETS)
    assert info.value.field == "ATP_METRICS_TOKEN"
    assert load_settings(data_dir=tmp_path, dev_mode=True, **_SECRETS).metrics_token is not None


def test_routers_are_included_without_a_prefix() -> None:
    """The route label is the matched route's own path, which leaves out a prefix given to
    `include_router`: routers carry their prefix themselves."""
    import serve.api

    tree = ast.parse(Path(serve.api.__file__).read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and getattr(n.func, "attr", None) == "include_router"]
    assert calls and all(not any(k.arg == "prefix" for k in c.keywords) for c in calls)
