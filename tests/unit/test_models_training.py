from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import torch

from models.datasets import Split, make_dataset, time_split
from models.features import FeatureSpec
from models.metrics import accuracy, correlation, mse, roc_auc
from models.networks import Network, build_network
from models.training import EpochStats, TrainResult, predict, train, window_ends, windows
from trading.data import SyntheticSource
from trading.errors import Invalid

START = datetime(2024, 3, 1, tzinfo=UTC)
SPEC = FeatureSpec(return_horizons=(1, 5), volatility_window=10, rsi_period=7, macd_fast=4,
                   macd_slow=9, macd_signal=3, volume_window=6)
LOOKBACK = 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only contend on shared cores
    yield
    torch.set_num_threads(before)


def make_split(kind: str, n: int = 400, seed: int = 4) -> Split:
    bars = list(SyntheticSource(seed=seed).bars(["AAPL"], START, START + n * timedelta(minutes=1)))
    return time_split(make_dataset(SPEC, bars, horizon=3, kind=kind), train=0.6, validation=0.2)


@pytest.fixture(scope="module")
def direction() -> Split:
    return make_split("direction")


@pytest.fixture(scope="module")
def returns() -> Split:
    return make_split("return")


def fit(split: Split, architecture: str = "mlp", *, seed: int = 0, **kwargs: object
        ) -> tuple[Network, TrainResult]:
    network = build_network(architecture, SPEC.n_features, LOOKBACK, split.train.kind, seed=1,
                            hidden=(16,)) if architecture == "mlp" else \
        build_network(architecture, SPEC.n_features, LOOKBACK, split.train.kind, seed=1,
                      channels=4, levels=2)
    options: dict[str, object] = {"epochs": 2, "batch_size": 32, "lr": 1e-3, "patience": 2,
                                  "seed": seed, "device": "cpu"} | kwargs
    return network, train(network, split, **options)  # type: ignore[arg-type]


# -- windows -----------------------------------------------------------------------------


def test_windows_end_at_the_row_they_predict_from() -> None:
    X = np.arange(30, dtype=np.float64).reshape(10, 3)
    w = windows(X, 4)
    assert w.shape == (7, 4, 3)
    assert np.array_equal(window_ends(10, 4), np.arange(3, 10))
    for i, end in enumerate(window_ends(10, 4)):
        assert np.array_equal(w[i], X[end - 3:end + 1])  # rows <= end, oldest first
    with pytest.raises(Invalid) as e:
        windows(X, 11)
    assert e.value.field == "features"


# -- training ----------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["mlp", "tcn"])
def test_same_seed_same_weights_and_metrics(direction: Split, architecture: str) -> None:
    a, first = fit(direction, architecture)
    b, second = fit(direction, architecture)
    assert first == second
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    _, other = fit(direction, architecture, seed=1)
    assert other != first


def test_direction_result_and_metrics(direction: Split) -> None:
    _, result = fit(direction)
    assert result.device == "cpu"
    assert result.samples == {name: len(getattr(direction, name)) - LOOKBACK + 1
                              for name in ("train", "validation", "test")}
    assert set(result.metrics) == {"loss", "accuracy", "auc"}
    accuracy_, auc = result.metrics["accuracy"], result.metrics["auc"]
    assert accuracy_ is not None and 0 <= accuracy_ <= 1
    assert auc is not None and 0 <= auc <= 1
    assert [s.epoch for s in result.history] == [1, 2]


def test_return_metrics_and_target_scaling(returns: Split) -> None:
    network, result = fit(returns)
    assert set(result.metrics) == {"loss", "mse", "correlation"}
    assert result.metrics["loss"] == pytest.approx(result.metrics["mse"], rel=1e-5)
    assert float(network.target_std) == pytest.approx(returns.train.y.std(), rel=1e-6)
    assert float(network.target_mean) == pytest.approx(returns.train.y.mean(), rel=1e-5)


def test_early_stopping_keeps_the_best_weights(direction: Split) -> None:
    network = build_network("mlp", SPEC.n_features, LOOKBACK, "direction", seed=1, hidden=(32,))
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def snapshot(stats: EpochStats) -> None:
        snapshots[stats.epoch] = {k: v.clone() for k, v in network.state_dict().items()}

    result = train(network, direction, epochs=30, batch_size=16, lr=0.3, patience=2, seed=0,
                   device="cpu", on_epoch=snapshot)
    losses = [s.validation_loss for s in result.history]
    assert result.stopped_early and result.epochs_run < 30
    assert result.best_epoch == 1 + int(np.argmin(losses)) < result.epochs_run
    assert result.epochs_run - result.best_epoch == 2
    assert result.best_validation_loss == min(losses)
    for name, value in network.state_dict().items():
        assert torch.equal(value, snapshots[result.best_epoch][name]), name
    validation = torch.tensor(windows(direction.validation.X, LOOKBACK), dtype=torch.float32)
    labels = torch.as_tensor(direction.validation.y[LOOKBACK - 1:], dtype=torch.float32)
    network.eval()
    with torch.no_grad():
        bce = torch.nn.functional.binary_cross_entropy_with_logits(network(validation), labels)
    assert float(bce) == pytest.approx(result.best_validation_loss, rel=1e-5)


def test_on_epoch_may_stop_training(direction: Split) -> None:
    _, result = fit(direction, epochs=5, on_epoch=lambda stats: stats.epoch == 2)
    assert result.epochs_run == 2 and not result.stopped_early


def test_training_leaves_the_global_torch_state_alone(direction: Split) -> None:
    torch.manual_seed(9)
    expected = torch.rand(2)
    torch.manual_seed(9)
    fit(direction, epochs=1)
    assert torch.equal(torch.rand(2), expected)
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch_size"), ({"lr": -1.0}, "lr"),
    ({"lr": float("nan")}, "lr"), ({"patience": 0}, "patience"), ({"seed": -1}, "seed"),
    ({"device": "quantum"}, "device"),
    *([] if torch.cuda.is_available() else [({"device": "cuda"}, "device")]),
])
def test_bad_options_name_their_field(direction: Split, kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(Invalid) as e:
        fit(direction, **kwargs)  # type: ignore[arg-type]
    assert e.value.field == field


def test_a_network_that_does_not_fit_the_dataset_is_refused(direction: Split, returns: Split) -> None:
    with pytest.raises(Invalid) as e:
        train(build_network("mlp", SPEC.n_features, LOOKBACK, "return"), direction, epochs=1,
              batch_size=8, lr=1e-3, patience=1, seed=0)
    assert e.value.field == "dataset"
    with pytest.raises(Invalid) as e:
        train(build_network("mlp", SPEC.n_features, 1000, "return"), returns, epochs=1,
              batch_size=8, lr=1e-3, patience=1, seed=0)
    assert e.value.field == "dataset"


def test_predict_gives_probabilities_and_refuses_warm_up_rows(direction: Split) -> None:
    network, _ = fit(direction, epochs=1)
    batch = windows(direction.test.X, LOOKBACK)
    p = predict(network, batch)
    assert p.shape == (len(batch),) and p.dtype == np.float64
    assert np.all((p > 0) & (p < 1))
    broken = batch[:2].copy()
    broken[0, 0, 0] = np.nan
    with pytest.raises(Invalid) as e:
        predict(network, broken)
    assert e.value.field == "features_window"
    with pytest.raises(Invalid) as e:
        predict(network, batch[:, 1:])
    assert e.value.field == "features_window"


# -- metrics -----------------------------------------------------------------------------


def brute_force_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    positives = scores[labels == 1]
    negatives = scores[labels == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0
               for p, n in itertools.product(positives, negatives))
    return wins / (len(positives) * len(negatives))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_a_brute_force_pair_count(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = (rng.random(60) < 0.4).astype(float)
    scores = np.round(rng.random(60) + 0.3 * labels, 1)  # coarse: many ties
    assert roc_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)


def test_metric_edge_cases() -> None:
    assert roc_auc(np.ones(4), np.arange(4.0)) is None
    assert roc_auc(np.array([0, 1]), np.array([0.2, 0.9])) == 1.0
    assert roc_auc(np.array([1, 0]), np.array([0.2, 0.9])) == 0.0
    assert accuracy(np.array([1, 0, 1]), np.array([0.7, 0.4, 0.2])) == pytest.approx(2 / 3)
    assert accuracy(np.array([]), np.array([])) is None
    a, b = np.array([1.0, 2.0, 4.0]), np.array([2.0, 1.0, 7.0])
    assert correlation(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])
    assert correlation(a, np.ones(3)) is None
    assert mse(a, b) == pytest.approx(np.mean((a - b) ** 2))
