from __future__ import annotations

import hashlib
import io
import json
import pickle
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import torch

from models.artifacts import FORMAT, Artifact, ModelCorrupt, load_artifact, save_artifact
from models.datasets import make_dataset, time_split
from models.features import FeatureSpec, compute_features
from models.networks import Network, build_network
from models.training import predict, train, windows
from trading.data import SyntheticSource
from trading.errors import AtpError, Invalid
from trading.instruments import Bar

START = datetime(2024, 3, 1, tzinfo=UTC)
SPEC = FeatureSpec(features=("log_return", "rsi", "macd", "volume_z"), return_horizons=(1, 3),
                   rsi_period=5, macd_fast=3, macd_slow=6, macd_signal=3, volume_window=5)
LOOKBACK = 6


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only contend on shared cores
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bars() -> list[Bar]:
    return list(SyntheticSource(seed=21).bars(["MSFT"], START, START + 300 * timedelta(minutes=1)))


def trained(bars: list[Bar], architecture: str, kind: str) -> Network:
    split = time_split(make_dataset(SPEC, bars, horizon=2, kind=kind))
    hyper: dict[str, Any] = {"hidden": (8, 4)} if architecture == "mlp" else {"channels": 4, "levels": 2}
    network = build_network(architecture, SPEC.n_features, LOOKBACK, kind, seed=3, **hyper)
    train(network, split, epochs=1, batch_size=32, lr=1e-2, patience=1, seed=0, device="cpu")
    return network


@pytest.fixture(scope="module")
def model(bars: list[Bar]) -> tuple[Network, Artifact]:
    network = trained(bars, "tcn", "direction")
    return network, save_artifact(network, SPEC, horizon=2,
                                  metrics={"auc": 0.55, "accuracy": 0.5, "corr": float("nan")})


@pytest.mark.parametrize("architecture", ["mlp", "tcn"])
@pytest.mark.parametrize("kind", ["direction", "return"])
def test_round_trip_predicts_the_same(bars: list[Bar], architecture: str, kind: str) -> None:
    network = trained(bars, architecture, kind)
    artifact = save_artifact(network, SPEC, horizon=2, metrics={"loss": 0.5})
    assert artifact.sha256 == hashlib.sha256(artifact.blob).hexdigest()
    loaded = load_artifact(artifact.blob, artifact.sha256)
    features = compute_features(SPEC, bars)[SPEC.warmup:]
    batch = windows(features, LOOKBACK)
    assert np.array_equal(loaded.predict(batch), predict(network, batch))
    assert (loaded.architecture, loaded.kind, loaded.horizon, loaded.lookback) == \
        (architecture, kind, 2, LOOKBACK)
    assert loaded.spec == SPEC and loaded.hyper == network.hyper
    assert loaded.metrics == {"loss": 0.5}
    assert loaded.predict_latest(bars) == pytest.approx(float(predict(network, batch[-1:])[0]), abs=0)


def test_metadata_and_single_windows(model: tuple[Network, Artifact], bars: list[Bar]) -> None:
    _, artifact = model
    loaded = load_artifact(bytearray(artifact.blob), artifact.sha256.upper())
    assert loaded.metrics == {"auc": 0.55, "accuracy": 0.5, "corr": None}
    assert loaded.sha256 == artifact.sha256
    assert loaded.meta["torch_version"] == torch.__version__
    assert loaded.min_bars == SPEC.warmup + LOOKBACK
    window = compute_features(SPEC, bars)[-LOOKBACK:]
    assert loaded.predict(window).shape == (1,)
    assert 0 < loaded.predict(window)[0] < 1
    with pytest.raises(Invalid) as e:
        loaded.predict_latest(bars[: loaded.min_bars - 1])
    assert e.value.field == "bars"
    assert isinstance(loaded.predict_latest(bars[: loaded.min_bars]), float)


def test_the_same_model_gives_the_same_bytes(model: tuple[Network, Artifact]) -> None:
    network, artifact = model
    again = save_artifact(network, SPEC, horizon=2,
                          metrics={"auc": 0.55, "accuracy": 0.5, "corr": float("nan")})
    assert again == artifact


# -- corruption --------------------------------------------------------------------------


@pytest.mark.parametrize("where", [0, 100, -1, 0.5])
def test_a_flipped_byte_is_model_corrupt(model: tuple[Network, Artifact], where: float) -> None:
    _, artifact = model
    blob = bytearray(artifact.blob)
    index = int(len(blob) * where) if isinstance(where, float) else where
    blob[index] ^= 0x01
    with pytest.raises(ModelCorrupt) as e:
        load_artifact(bytes(blob), artifact.sha256)
    assert e.value.code == "model_corrupt"
    assert "checksum" in e.value.message


def test_a_wrong_or_missing_checksum_is_model_corrupt(model: tuple[Network, Artifact]) -> None:
    _, artifact = model
    for expected in ("0" * 64, "", artifact.sha256[:-1], None):
        with pytest.raises(ModelCorrupt):
            load_artifact(artifact.blob, expected)  # type: ignore[arg-type]
    with pytest.raises(ModelCorrupt):
        load_artifact("not bytes", artifact.sha256)  # type: ignore[arg-type]


def sealed(blob: bytes) -> tuple[bytes, str]:
    return blob, hashlib.sha256(blob).hexdigest()


def saved(payload: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def test_unreadable_blobs_with_matching_checksums_are_model_corrupt(
        model: tuple[Network, Artifact]) -> None:
    _, artifact = model
    payload = torch.load(io.BytesIO(artifact.blob), weights_only=True)
    meta = json.loads(payload["meta"])
    broken: list[object] = [
        b"", b"not a zip at all", artifact.blob[: len(artifact.blob) // 2],
        saved([1, 2, 3]), saved({"format": "other/1"}),
        saved({**payload, "meta": "{not json"}),
        saved({**payload, "meta": json.dumps({**meta, "architecture": "lstm"})}),
        saved({**payload, "meta": json.dumps({**meta, "n_features": 3})}),
        saved({**payload, "meta": json.dumps({**meta, "lookback": 0})}),
        saved({**payload, "meta": json.dumps({**meta, "hyper": {"channels": -1}})}),
        saved({**payload, "meta": json.dumps({**meta, "label": "direction"})}),
        saved({**payload, "meta": json.dumps({**meta, "feature_spec": {"features": ["rsi"]}})}),
        saved({**payload, "state_dict": {k: v for k, v in payload["state_dict"].items()
                                         if k != "head.bias"}}),
        saved({**payload, "state_dict": {"x": "not a tensor"}}),
    ]
    for blob in broken:
        with pytest.raises(ModelCorrupt):
            load_artifact(*sealed(blob))  # type: ignore[arg-type]


CALLED: list[str] = []


def _record(message: str) -> None:
    CALLED.append(message)


class Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_record, ("unpickled",))


def test_arbitrary_objects_are_never_unpickled(model: tuple[Network, Artifact]) -> None:
    _, artifact = model
    payload = torch.load(io.BytesIO(artifact.blob), weights_only=True)
    with pytest.raises(ModelCorrupt):
        load_artifact(*sealed(saved({**payload, "extra": Payload()})))
    assert CALLED == []


def test_model_corrupt_is_a_platform_error_that_survives_pickling() -> None:
    error = ModelCorrupt("bad blob")
    assert isinstance(error, AtpError) and error.code == "model_corrupt"
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, ModelCorrupt) and copy.to_dict() == error.to_dict()


def test_save_refuses_a_spec_that_does_not_fit(model: tuple[Network, Artifact]) -> None:
    network, _ = model
    with pytest.raises(Invalid) as e:
        save_artifact(network, FeatureSpec(), horizon=2)
    assert e.value.field == "feature_spec"
    with pytest.raises(Invalid) as e:
        save_artifact(network, SPEC, horizon=0)
    assert e.value.field == "horizon"
    with pytest.raises(Invalid) as e:
        save_artifact(network, SPEC, horizon=2, metrics={"auc": "high"})
    assert e.value.field == "metrics"
    assert FORMAT == "atp-model/1"
