"""A trained model as one checksummed blob, and back.

The blob is ``torch.save`` of a dict holding only plain types and tensors:

    {"format": "atp-model/1",
     "meta": "<JSON: architecture, hyper, n_features, lookback, label {kind, horizon},
              feature_spec, metrics, torch_version>",
     "state_dict": {name: tensor}}        weights and the scaling buffers, on the CPU

`load_artifact` checks the SHA-256 before reading a byte of it, reads with
``torch.load(weights_only=True)`` (no arbitrary unpickling), rebuilds the network from the
metadata and loads the weights strictly. Anything wrong on the way is `ModelCorrupt`.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from models.datasets import check_label
from models.features import BarsOrArrays, FeatureSpec, compute_features
from models.networks import Network, build_network
from models.training import predict
from trading.errors import Conflict, Invalid

FORMAT = "atp-model/1"


class ModelCorrupt(Conflict):
    """A stored model whose checksum does not match, or that cannot be read back (409)."""

    default_code = "model_corrupt"


@dataclass(frozen=True)
class Artifact:
    """A serialised model and the SHA-256 (hex) of its bytes."""

    blob: bytes
    sha256: str


def _plain_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, value in (metrics or {}).items():
        if value is not None and (isinstance(value, bool)
                                  or not isinstance(value, int | float | np.integer | np.floating)):
            raise Invalid(f"metric {name!r} must be a number or None", field="metrics")
        out[str(name)] = None if value is None or not math.isfinite(value) else float(value)
    return out


def save_artifact(network: Network, spec: FeatureSpec, *, horizon: int,
                  metrics: Mapping[str, Any] | None = None) -> Artifact:
    """Serialise `network` with what it needs to predict: its features, lookback and label.

    The label kind is the network's output; `metrics` (numbers or None) travel along.
    """
    check_label(network.output, horizon)
    if spec.n_features != network.n_features:
        raise Invalid(f"the spec gives {spec.n_features} features, the network takes "
                      f"{network.n_features}", field="feature_spec")
    meta = {
        "architecture": network.architecture, "hyper": network.hyper,
        "n_features": network.n_features, "lookback": network.lookback,
        "label": {"kind": network.output, "horizon": horizon},
        "feature_spec": spec.to_json(), "metrics": _plain_metrics(metrics),
        "torch_version": torch.__version__,
    }
    state = {name: value.detach().cpu().clone() for name, value in network.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "meta": json.dumps(meta, sort_keys=True, allow_nan=False),
                "state_dict": state}, buffer)
    blob = buffer.getvalue()
    return Artifact(blob, hashlib.sha256(blob).hexdigest())


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model read back from its artifact, ready to predict on the CPU."""

    network: Network
    spec: FeatureSpec
    architecture: str
    hyper: dict[str, Any]
    lookback: int
    kind: str
    horizon: int
    metrics: dict[str, float | None]
    sha256: str
    meta: dict[str, Any] = field(repr=False)

    @property
    def min_bars(self) -> int:
        """Return how many bars `predict_latest` needs."""
        return self.spec.warmup + self.lookback

    def predict(self, features_window: np.ndarray) -> np.ndarray:
        """Predict from raw feature windows: ``(lookback, n_features)`` or a batch of them.

        Returns shape ``(batch,)`` (``(1,)`` for one window): the probability of a rise
        for ``direction``, the expected log return over `horizon` bars for ``return``.
        """
        window = np.asarray(features_window, dtype=np.float64)
        return predict(self.network, window[None] if window.ndim == 2 else window)

    def predict_latest(self, data: BarsOrArrays) -> float:
        """Compute the features of `data` (one symbol's bars, oldest first) and predict at its last bar."""
        features = compute_features(self.spec, data)
        if len(features) < self.min_bars:
            raise Invalid(f"need at least {self.min_bars} bars, got {len(features)}", field="bars")
        return float(self.predict(features[-self.lookback:])[0])


def _read(blob: bytes) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    try:
        payload = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # a garbled zip, pickle or tensor: torch raises many kinds
        raise ModelCorrupt(f"the model cannot be read: {type(exc).__name__}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelCorrupt(f"the model is not in the {FORMAT} format")
    state, meta_text = payload.get("state_dict"), payload.get("meta")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ModelCorrupt("the model's weights are not a state dict")
    try:
        meta = json.loads(meta_text) if isinstance(meta_text, str) else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise ModelCorrupt("the model's metadata is not a JSON object")
    return meta, state


def load_artifact(blob: bytes | bytearray | memoryview, expected_sha256: str) -> LoadedModel:
    """Verify `blob` against `expected_sha256`, then rebuild the model it holds.

    Raises `ModelCorrupt` on a checksum mismatch or a blob that does not read back.
    """
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise ModelCorrupt("the model is not bytes")
    data = bytes(blob)
    actual = hashlib.sha256(data).hexdigest()
    expected = expected_sha256.lower() if isinstance(expected_sha256, str) else ""
    if not hmac.compare_digest(actual, expected):
        raise ModelCorrupt("the model's checksum does not match its record")
    meta, state = _read(data)
    try:
        label = meta["label"]
        check_label(label["kind"], label["horizon"])
        spec = FeatureSpec.from_json(meta["feature_spec"])
        hyper = meta["hyper"]
        network = build_network(meta["architecture"], meta["n_features"], meta["lookback"],
                                label["kind"], **hyper)
        if spec.n_features != network.n_features:
            raise ModelCorrupt("the model's feature spec does not fit its network")
        network.load_state_dict(state, strict=True)
        metrics = _plain_metrics(meta.get("metrics"))
    except ModelCorrupt:
        raise
    except (Invalid, KeyError, TypeError, RuntimeError) as exc:
        raise ModelCorrupt(f"the model's metadata or weights are inconsistent: {exc}") from None
    network.eval()
    return LoadedModel(network=network, spec=spec, architecture=network.architecture,
                       hyper=network.hyper, lookback=network.lookback, kind=network.output,
                       horizon=label["horizon"], metrics=metrics, sha256=actual, meta=meta)
