"""Read Prometheus' text exposition format in tests (with prometheus_client's parser)."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def families(text: bytes) -> dict[str, Any]:
    """Metric families by name (counters without their ``_total``)."""
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def sample_value(family: Any, name: str, **labels: str) -> float:
    """The one sample of `family` called `name` with exactly `labels`."""
    matches = [s.value for s in family.samples if s.name == name and s.labels == labels]
    assert len(matches) == 1, (name, labels, family.samples)
    return float(matches[0])
