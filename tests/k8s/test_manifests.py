"""The Kubernetes deployment: every overlay renders and every object validates.

Built-in kinds against Kubernetes' schemas (`kubernetes-validate`, strict, offline), Ray
kinds against KubeRay 1.7.0's CRDs (k8s/schemas/kuberay, unknown fields rejected) and
KubeRay's own rules the CRDs do not carry (name lengths, min <= max, ...), the Serve config
against Ray's `ServeDeploySchema` and regenerated with `serve build`, the Prometheus
operator's kinds structurally, dashboards and alerts against the metrics that exist.
Nothing here talks to a Kubernetes cluster: none is available to the tests.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kube_checks import (
    DNS_1035,
    DNS_1123_LABEL,
    K8S,
    MAX_NAME,
    OVERLAYS,
    ROOT,
    cluster_specs,
    crd_errors,
    dashboard_exprs,
    load_yaml,
    pinned_ray_version,
    pod_specs,
    promql_metrics,
    quantity_problems,
    render,
)

from serve import serve_config
from serve.metrics import METRIC_NAMES, SELF_METRIC_NAMES
from tenancy.settings import SECRET_FIELDS, Settings

KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")  # oldest and newest we claim; both bundled offline
RAY_KINDS = ("RayCluster", "RayService", "RayJob")
MONITORING_KINDS = ("PodMonitor", "ServiceMonitor", "PrometheusRule")

# The gateway's metrics (serve/metrics.py), the names dashboards and alerts may use.
PLATFORM_METRICS = (*METRIC_NAMES, *SELF_METRIC_NAMES)
HISTOGRAMS = ("atp_http_request_duration_seconds",)
# Ray's documented metrics that the dashboards and alerts use: Ray's docs, "System Metrics"
# (ray-observability/reference/system-metrics) and Serve's "Built-in Ray Serve metrics"
# (serve/monitoring). Add a name here only after finding it there.
RAY_METRICS = (
    "ray_node_cpu_utilization", "ray_node_cpu_count", "ray_node_mem_used", "ray_node_mem_total",
    "ray_node_mem_available", "ray_node_gpus_utilization", "ray_node_gram_used", "ray_resources",
    "ray_tasks", "ray_actors", "ray_cluster_active_nodes", "ray_cluster_failed_nodes",
    "ray_cluster_pending_nodes", "ray_serve_num_http_requests_total",
    "ray_serve_num_http_error_requests_total", "ray_serve_http_request_latency_ms",
    "ray_serve_deployment_replica_healthy", "ray_serve_deployment_processing_latency_ms",
    "ray_serve_num_multiplexed_models",
)


def _known_metrics() -> set[str]:
    names = set(PLATFORM_METRICS) | set(RAY_METRICS)
    for histogram in (*HISTOGRAMS, "ray_serve_http_request_latency_ms",
                      "ray_serve_deployment_processing_latency_ms"):
        names |= {f"{histogram}_bucket", f"{histogram}_sum", f"{histogram}_count"}
    return names


def _all_objects() -> list[tuple[str, dict[str, Any]]]:
    objects = [(f"overlays/{o}", obj) for o in OVERLAYS for obj in render(f"overlays/{o}")]
    objects += [("ray-cluster.yaml", obj) for obj in load_yaml(ROOT / "ray-cluster.yaml")]
    objects += [(f"templates/{p.name}", obj) for p in sorted((K8S / "templates").glob("*.yaml"))
                for obj in load_yaml(p)]
    objects += [(f"secrets/{p.name}", obj) for p in sorted((K8S / "secrets").glob("*.yaml"))
                for obj in load_yaml(p)]
    return objects


def _ray_objects() -> list[tuple[str, dict[str, Any]]]:
    return [(where, obj) for where, obj in _all_objects() if obj["kind"] in RAY_KINDS]


def _rayservice(overlay: str) -> dict[str, Any]:
    return next(o for o in render(f"overlays/{overlay}") if o["kind"] == "RayService")


# -- rendering and schemas --------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_into_its_namespace(overlay: str) -> None:
    objects = render(f"overlays/{overlay}")
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "RayService", "Ingress", "ConfigMap", "NetworkPolicy",
            "PodDisruptionBudget", "Job", "Service"} <= kinds
    namespace = next(o["metadata"]["name"] for o in objects if o["kind"] == "Namespace")
    assert namespace == f"atp-{overlay}"
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {namespace}
    # The local-only inputs (the RayCluster copy, the Serve config) never reach the cluster.
    assert "RayCluster" not in kinds
    assert not [o for o in objects if "local-config" in json.dumps(o.get("metadata", {}))]


def test_builtin_kinds_validate_against_kubernetes_schemas() -> None:
    checked = 0
    for where, obj in _all_objects():
        if obj["kind"] in RAY_KINDS or obj["kind"] in MONITORING_KINDS:
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where}: {obj['kind']}/{obj['metadata']['name']} (Kubernetes {version}): "
                            f"{exc.message}")
        checked += 1
    assert checked >= 3 * 15


def test_ray_kinds_validate_against_kuberay_crds_with_unknown_fields_rejected() -> None:
    seen = set()
    for where, obj in _ray_objects():
        errors = crd_errors(obj)
        assert not errors, f"{where}: {obj['kind']}/{obj['metadata']['name']}: {errors}"
        seen.add(obj["kind"])
    assert seen == set(RAY_KINDS)


def test_the_crd_check_rejects_a_typo() -> None:
    cluster = load_yaml(ROOT / "ray-cluster.yaml")[0]
    cluster["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    assert any("maxReplica" in e for e in crd_errors(cluster))


def test_ray_names_groups_and_replica_bounds_follow_kuberay_rules() -> None:
    for where, obj in _ray_objects():
        name = obj["metadata"]["name"]
        assert DNS_1035.match(name) and len(name) <= MAX_NAME[obj["kind"]], (where, name)
        for spec in cluster_specs(obj):
            groups = spec["workerGroupSpecs"]
            names = [g["groupName"] for g in groups]
            assert len(set(names)) == len(names) and all(map(DNS_1123_LABEL.match, names)), names
            for group in [spec["headGroupSpec"], *groups]:
                params = group.get("rayStartParams", {})
                assert "labels" not in params, "KubeRay wants the group's `labels` field"
                if group.get("resources"):
                    assert not {"num-cpus", "num-gpus", "memory", "resources"} & set(params), \
                        "KubeRay refuses resources in both rayStartParams and `resources`"
            for group in groups:
                low, high = group["minReplicas"], group["maxReplicas"]
                assert 0 <= low <= high, (where, group["groupName"], low, high)
                assert low <= group.get("replicas", low) <= high, (where, group["groupName"])


def test_quantities_are_strings() -> None:
    for where, obj in _all_objects():
        if obj["kind"] in RAY_KINDS or obj["kind"] == "Job":
            assert not quantity_problems(obj), (where, quantity_problems(obj))


# -- Ray version, image, cluster shape --------------------------------------------------------

def test_dockerfile_base_rayversion_and_image_tags_equal_the_pinned_ray() -> None:
    pinned = pinned_ray_version()
    dockerfile = (ROOT / "Dockerfile").read_text()
    args = dict(re.findall(r'^ARG (\w+)="?([^"\n]*)"?$', dockerfile, re.M))
    (base,) = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert base == f"rayproject/ray:{pinned}-py311"
    for where, obj in _all_objects():
        for spec in cluster_specs(obj):
            assert spec["rayVersion"] == pinned, where
        for group, pod in pod_specs(obj):
            for container in pod["containers"]:
                tag = container["image"].split("@")[0].rpartition(":")[2]
                assert tag == pinned, (where, group, container["image"])


def test_base_rayservice_runs_exactly_ray_cluster_yaml() -> None:
    root = (ROOT / "ray-cluster.yaml").read_text()
    assert (K8S / "base" / "ray-cluster.yaml").read_text() == root, "run `make k8s-config`"
    cluster = yaml.safe_load(root)
    service = next(o for o in render("base") if o["kind"] == "RayService")
    config = json.loads(json.dumps(service["spec"]["rayClusterConfig"]))
    for pod in [config["headGroupSpec"], *config["workerGroupSpecs"]]:  # the generated name
        for container in pod["template"]["spec"]["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"].startswith("atp-config-")
                    source["configMapRef"]["name"] = "atp-config"
    assert config == cluster["spec"]


def test_cluster_shape_head_groups_auth_and_fault_tolerance() -> None:
    spec = load_yaml(ROOT / "ray-cluster.yaml")[0]["spec"]
    assert spec["headGroupSpec"]["resources"]["CPU"] == "0"  # no tenant work on the head
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"general", "gpu", "jobs", "enterprise"}
    assert spec["enableInTreeAutoscaling"] is True
    assert groups["gpu"]["minReplicas"] == 0
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == "1"
    assert groups["jobs"]["resources"]["CPU"] == "0" and "atp_job_cpus" in groups["jobs"]["resources"]
    assert groups["enterprise"]["resources"] == {"dedicated_enterprise": "1000"}
    assert spec["authOptions"] == {"mode": "token", "secretName": "atp-ray-auth"}
    password = spec["gcsFaultToleranceOptions"]["redisPassword"]
    assert set(password) == {"valueFrom"} and password["valueFrom"]["secretKeyRef"]["name"] == "atp-gcs-redis"
    # Job nodes never see the platform's secrets (database URL, keys).
    for container in groups["jobs"]["template"]["spec"]["containers"]:
        assert not [s for s in container.get("envFrom", []) if "secretRef" in s]
        assert not [e for e in container.get("env", []) if "valueFrom" in e]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_keep_the_worker_groups_in_order(overlay: str) -> None:
    groups = [g["groupName"] for g in _rayservice(overlay)["spec"]["rayClusterConfig"]["workerGroupSpecs"]]
    assert groups == ["general", "gpu", "jobs", "enterprise"]  # the overlays patch by index


# -- Serve config -----------------------------------------------------------------------------

def test_serve_config_is_what_serve_build_generates_now() -> None:
    generated = serve_config.generate()
    assert set(generated) == set(serve_config.OUTPUTS)
    for path, text in generated.items():
        assert (ROOT / path).read_text() == text, f"{path} is stale: run `make k8s-config`"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_config_v2_passes_rays_own_schema(overlay: str) -> None:
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load(_rayservice(overlay)["spec"]["serveConfigV2"]))
    apps = {app.name: app for app in config.applications}
    assert set(apps) == {"gateway", "models"}
    assert apps["gateway"].route_prefix == "/" and apps["gateway"].import_path == "serve.deploy:gateway"
    assert apps["models"].route_prefix is None and apps["models"].import_path == "serve.deploy:models"
    assert config.http_options.port == 8000


# -- settings and secrets ---------------------------------------------------------------------

def _env_keys(text: str) -> set[str]:
    return {line.split("=", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_configmap_and_secret_templates_name_real_settings_and_hold_no_values() -> None:
    settings = {f"ATP_{name.upper()}" for name in Settings.model_fields}
    config = _env_keys((K8S / "base" / "config.env").read_text())
    atp = {k for k in config if k.startswith("ATP_")}
    assert atp <= settings, atp - settings
    secrets = {o["metadata"]["name"]: o for o in load_yaml(K8S / "secrets" / "atp-secrets.template.yaml")}
    platform = secrets["atp-secrets"]["stringData"]
    assert set(platform) <= settings, set(platform) - settings
    required = {f"ATP_{n.upper()}" for n in SECRET_FIELDS} | {"ATP_DATABASE_URL", "ATP_REDIS_URL"}
    assert required <= set(platform)
    assert not config & set(platform), "a setting is both in the ConfigMap and the Secret"
    assert set(secrets["atp-ray-auth"]["stringData"]) == {"auth_token"}  # KubeRay's key
    assert set(secrets["atp-gcs-redis"]["stringData"]) == {"password"}
    for secret in secrets.values():
        assert all(value == "" for value in secret["stringData"].values()), "no values in templates"


def test_configmap_placement_settings_parse_and_match_the_cluster_resources() -> None:
    from actors.placement import dedicated_resource, job_entrypoint, tenant_resources

    lines = (K8S / "base" / "config.env").read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    settings = Settings(**{k[4:].lower(): v for k, v in env.items() if k.startswith("ATP_")})
    spec = load_yaml(ROOT / "ray-cluster.yaml")[0]["spec"]
    head = spec["headGroupSpec"]["resources"]
    groups = {g["groupName"]: g.get("resources", {}) for g in spec["workerGroupSpecs"]}
    # System actors fit only the head; job drivers only the jobs group; enterprise its group.
    assert set(settings.system_resources) <= set(head) and head["CPU"] == "0"
    assert settings.job_cpu_resource in groups["jobs"] and groups["jobs"]["CPU"] == "0"
    cpus, resources = job_entrypoint(settings, None, 0.5)
    assert cpus == 0 and resources == {"atp_job_cpus": 0.5}
    assert set(tenant_resources("enterprise")) == {dedicated_resource("enterprise")}
    assert dedicated_resource("enterprise") in groups["enterprise"]


# -- network policies, budgets, ingress -------------------------------------------------------

def _policies(overlay: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o["spec"] for o in render(f"overlays/{overlay}")
            if o["kind"] == "NetworkPolicy"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_takes_ingress_and_jobs_reach_no_database(overlay: str) -> None:
    policies = _policies(overlay)
    deny = policies["atp-default-deny-ingress"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and not deny.get("ingress")
    outside = {}
    for name, spec in policies.items():
        for rule in spec.get("ingress", []):
            for peer in rule.get("from", []):
                if "namespaceSelector" in peer:
                    ns = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    outside.setdefault(ns, []).append((name, spec["podSelector"], rule.get("ports")))
    ((name, selector, ports),) = outside["ingress-nginx"]
    assert selector["matchLabels"]["ray.io/serve"] == "true" and ports == [{"protocol": "TCP", "port": 8000}]
    assert set(outside) == {"ingress-nginx", "ray-system", "monitoring"}
    jobs = policies["atp-jobs-egress"]
    assert jobs["podSelector"]["matchLabels"]["atp.dev/pool"] == "jobs" and jobs["policyTypes"] == ["Egress"]
    for rule in jobs["egress"]:
        for peer in rule["to"]:
            assert "ipBlock" not in peer  # nothing outside the cluster: no external PostgreSQL
            if "namespaceSelector" in peer:  # DNS only
                assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
                assert {p["port"] for p in rule["ports"]} == {53}
            else:  # the Ray pods of this namespace, never a database pod
                assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "atp-ray"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budgets_and_websocket_ingress(overlay: str) -> None:
    objects = render(f"overlays/{overlay}")
    budgets = {o["spec"]["selector"]["matchLabels"]["atp.dev/pool"] for o in objects
               if o["kind"] == "PodDisruptionBudget"}
    assert {"head", "general"} <= budgets
    ingress = next(o for o in objects if o["kind"] == "Ingress")
    notes = ingress["metadata"]["annotations"]
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(notes["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert {p["backend"]["service"]["name"] for p in paths} == {"atp-serve-svc"}
    assert "/v1" in {p["path"] for p in paths}
    assert not [p for p in paths if p["path"] in ("/", "/metrics")], "/metrics stays inside"


# -- monitoring -------------------------------------------------------------------------------

def _monitoring() -> dict[str, list[dict[str, Any]]]:
    objects: dict[str, list[dict[str, Any]]] = {}
    for obj in render("monitoring"):
        objects.setdefault(obj["kind"], []).append(obj)
    return objects


def test_monitoring_objects_are_well_formed() -> None:
    objects = _monitoring()
    for kind in MONITORING_KINDS:
        for obj in objects[kind]:
            assert obj["apiVersion"] == "monitoring.coreos.com/v1" and set(obj) == {
                "apiVersion", "kind", "metadata", "spec"}
    (pods,) = objects["PodMonitor"]
    assert set(pods["spec"]) == {"selector", "podMetricsEndpoints"}
    assert pods["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "atp-ray"}
    assert [e["port"] for e in pods["spec"]["podMetricsEndpoints"]] == ["metrics"]
    head = load_yaml(ROOT / "ray-cluster.yaml")[0]["spec"]["headGroupSpec"]["template"]["spec"]
    assert {"name": "metrics", "containerPort": 8080} in head["containers"][0]["ports"]
    (gateway,) = objects["ServiceMonitor"]
    assert set(gateway["spec"]) == {"selector", "endpoints"}
    assert gateway["spec"]["selector"]["matchLabels"] == {"ray.io/serve": "atp-serve"}  # KubeRay's
    (endpoint,) = gateway["spec"]["endpoints"]
    assert endpoint["port"] == "serve" and endpoint["path"] == "/metrics"
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": {
        "name": "atp-secrets", "key": "ATP_METRICS_TOKEN"}}
    allowed_rule = {"alert", "expr", "for", "labels", "annotations"}
    (rules,) = objects["PrometheusRule"]
    alerts = {}
    for group in rules["spec"]["groups"]:
        assert set(group) == {"name", "rules"}
        for rule in group["rules"]:
            assert set(rule) <= allowed_rule and rule["labels"]["severity"] in ("warning", "critical")
            alerts[rule["alert"]] = rule["expr"]
    assert {"AtpGatewayHigh5xxRate", "AtpTenantOverQuota", "AtpAgentOffline", "AtpRayNodeLost"} <= set(alerts)
    for name, expr in alerts.items():
        unknown = promql_metrics(expr) - _known_metrics()
        assert not unknown, (name, unknown)


def test_dashboards_read_only_metrics_the_platform_or_ray_export() -> None:
    maps = [o for o in _monitoring()["ConfigMap"] if o["metadata"]["labels"].get("grafana_dashboard") == "1"]
    titles = set()
    for config_map in maps:
        for text in config_map["data"].values():
            dashboard = json.loads(text)
            titles.add(dashboard["title"])
            exprs = list(dashboard_exprs(dashboard))
            assert dashboard["uid"] and dashboard["panels"] and exprs
            for expr in exprs:
                unknown = promql_metrics(expr) - _known_metrics()
                assert not unknown, (dashboard["title"], expr, unknown)
    assert titles == {"ATP / Tenant overview", "ATP / Resource usage per tenant", "ATP / Billing"}


def test_staging_and_production_monitor_dev_does_not() -> None:
    assert "PodMonitor" not in {o["kind"] for o in render("overlays/dev")}
    for overlay in ("staging", "production"):
        assert {"PodMonitor", "ServiceMonitor", "PrometheusRule"} <= {
            o["kind"] for o in render(f"overlays/{overlay}")}


def test_rayjob_template_targets_a_cluster_and_the_jobs_group() -> None:
    (job,) = load_yaml(K8S / "templates" / "rayjob-custom-strategy.yaml")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": "atp-ray"}
    assert json.loads(job["spec"]["entrypointResources"]) == {"atp_job_cpus": 1}
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]["ATP_API_URL"]
    assert Path(ROOT / "actors" / "job_main.py").exists()  # `python -m actors.job_main`
