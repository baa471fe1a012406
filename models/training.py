"""Train a network on windows of a time-split dataset, with early stopping.

A sample is the window of the `lookback` feature rows ending at row ``i`` (rows
``i - lookback + 1 .. i`` of one part, oldest first) with label ``y[i]``: the window
never reaches past the bar it predicts from. Windows stay inside their part, so each
part yields ``len(part) - lookback + 1`` samples.

`train` standardises features (and ``return`` targets) with the training part's
statistics, fits with Adam on shuffled training windows (the order comes from the seed),
keeps the weights of the epoch with the lowest validation loss, stops after `patience`
epochs without improvement, and scores the test part. Under one seed on the CPU, two runs
give identical weights and metrics. It uses CUDA when available and `device` is None; there
it is seeded and asks for deterministic kernels, but only warns where one has none.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from models.datasets import Dataset, Split
from models.metrics import accuracy, correlation, mse, roc_auc
from models.networks import Network
from trading.errors import Invalid

EVAL_BATCH = 4096


@dataclass(frozen=True)
class EpochStats:
    """The losses after one epoch (1-based), and the best epoch so far."""

    epoch: int
    train_loss: float
    validation_loss: float
    best_epoch: int
    best_validation_loss: float


@dataclass(frozen=True)
class TrainResult:
    """What `train` did: its epochs, the restored best epoch and the test metrics.

    `metrics` are on the test part: ``loss``, ``accuracy`` and ``auc`` for ``direction``;
    ``loss``, ``mse`` and ``correlation`` for ``return``; None where undefined.
    """

    epochs_run: int
    best_epoch: int
    best_validation_loss: float
    stopped_early: bool
    history: tuple[EpochStats, ...]
    metrics: dict[str, float | None]
    device: str
    samples: dict[str, int]  # windows per part: train, validation, test


def window_ends(n_rows: int, lookback: int) -> np.ndarray:
    """Return the row index each window ends at: ``lookback - 1 .. n_rows - 1``."""
    return np.arange(lookback - 1, n_rows, dtype=np.int64)


def windows(X: np.ndarray, lookback: int) -> np.ndarray:
    """Return every window of `lookback` consecutive rows of `X`: ``(n - lookback + 1, lookback, f)``."""
    X = np.asarray(X)
    if X.ndim != 2 or not 1 <= lookback <= len(X):
        raise Invalid(f"need a 2-D array of at least {lookback} rows", field="features")
    view = np.lib.stride_tricks.sliding_window_view(X, lookback, axis=0)  # (n', f, lookback)
    return view.transpose(0, 2, 1)


class _Windows:
    """One part's rows on the device, cut into windows on demand."""

    def __init__(self, part: Dataset, lookback: int, device: torch.device) -> None:
        self.X = torch.as_tensor(part.X, dtype=torch.float32, device=device)
        self.y = torch.as_tensor(part.y, dtype=torch.float32, device=device)
        self.ends = torch.as_tensor(window_ends(len(part), lookback), device=device)
        self.offsets = torch.arange(1 - lookback, 1, device=device)

    def __len__(self) -> int:
        return len(self.ends)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ends = self.ends[index]
        return self.X[ends[:, None] + self.offsets], self.y[ends]


def _check(name: str, value: Any, least: float, most: float, *, integer: bool = True) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) \
            or not least <= value <= most:
        kind = "an integer" if integer else "a number"
        raise Invalid(f"{name} must be {kind} from {least} to {most}", field=name)


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise Invalid(f"unknown device {device!r}", field="device") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise Invalid("CUDA is not available here", field="device")
    return chosen


def _loss(network: Network) -> nn.Module:
    return nn.BCEWithLogitsLoss() if network.output == "direction" else nn.MSELoss()


def _outputs(network: Network, data: _Windows) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the network's raw outputs and the labels of every window of `data`."""
    network.eval()
    outs, labels = [], []
    with torch.no_grad():
        for start in range(0, len(data), EVAL_BATCH):
            xb, yb = data.batch(torch.arange(start, min(start + EVAL_BATCH, len(data)),
                                             device=data.ends.device))
            outs.append(network(xb))
            labels.append(yb)
    return torch.cat(outs), torch.cat(labels)


def _scores(network: Network, data: _Windows) -> dict[str, float | None]:
    out, y = _outputs(network, data)
    loss = float(_loss(network)(out, y))
    if network.output == "direction":
        probabilities = torch.sigmoid(out).cpu().numpy()
        labels = y.cpu().numpy()
        return {"loss": loss, "accuracy": accuracy(labels, probabilities),
                "auc": roc_auc(labels, probabilities)}
    values, labels = out.cpu().numpy(), y.cpu().numpy()
    return {"loss": loss, "mse": mse(values, labels), "correlation": correlation(values, labels)}


def _fit_scaling(network: Network, train: Dataset) -> None:
    target_mean, target_std = 0.0, 1.0
    if network.output == "return":
        target_mean, target_std = float(train.y.mean()), float(train.y.std())
    network.set_scaling(train.X.mean(axis=0), train.X.std(axis=0), target_mean=target_mean,
                        target_std=target_std)


def train(network: Network, dataset: Split, *, epochs: int, batch_size: int, lr: float,
          patience: int, seed: int, device: str | torch.device | None = None,
          weight_decay: float = 0.0,
          on_epoch: Callable[[EpochStats], bool | None] | None = None) -> TrainResult:
    """Train `network` in place on `dataset` and return what happened.

    The network ends with the best epoch's weights, on the device it came on. `on_epoch`
    is called after every epoch (a Tune reporter, a progress bar); returning True stops.
    """
    _check("epochs", epochs, 1, 10_000)
    _check("batch_size", batch_size, 1, 65_536)
    _check("lr", lr, 1e-12, 10.0, integer=False)
    _check("patience", patience, 1, 10_000)
    _check("seed", seed, 0, 2 ** 63 - 1)
    _check("weight_decay", weight_decay, 0.0, 1.0, integer=False)
    if dataset.train.kind != network.output:
        raise Invalid(f"the network predicts {network.output!r}, the labels are "
                      f"{dataset.train.kind!r}", field="dataset")
    if dataset.train.X.shape[1] != network.n_features:
        raise Invalid(f"the network takes {network.n_features} features, the dataset has "
                      f"{dataset.train.X.shape[1]}", field="dataset")
    lookback = network.lookback
    for name in ("train", "validation", "test"):
        if len(getattr(dataset, name)) < lookback:
            raise Invalid(f"the {name} part has fewer rows than the lookback {lookback}",
                          field="dataset")
    target = _device(device)
    home = next(network.parameters()).device
    forked = [] if target.type != "cuda" else \
        [target.index if target.index is not None else torch.cuda.current_device()]
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(seed)
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
            return _run(network, dataset, target, epochs=epochs, batch_size=batch_size, lr=lr,
                        patience=patience, seed=seed, weight_decay=weight_decay,
                        on_epoch=on_epoch)
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        network.to(home)


def _run(network: Network, dataset: Split, device: torch.device, *, epochs: int,
         batch_size: int, lr: float, patience: int, seed: int, weight_decay: float,
         on_epoch: Callable[[EpochStats], bool | None] | None) -> TrainResult:
    _fit_scaling(network, dataset.train)
    network.to(device)
    parts = {name: _Windows(getattr(dataset, name), network.lookback, device)
             for name in ("train", "validation", "test")}
    training = parts["train"]
    loss_fn = _loss(network)
    optimiser = torch.optim.Adam(network.parameters(), lr=lr, weight_decay=weight_decay)
    order = np.random.default_rng(seed)
    best_loss, best_epoch, best_state = math.inf, 0, _copy_state(network)
    history: list[EpochStats] = []
    stopped_early = False
    for epoch in range(1, epochs + 1):
        network.train()
        permutation = torch.as_tensor(order.permutation(len(training)), device=device)
        total = 0.0
        for start in range(0, len(training), batch_size):
            xb, yb = training.batch(permutation[start:start + batch_size])
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(network(xb), yb)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(yb)
        out, y = _outputs(network, parts["validation"])
        validation_loss = float(loss_fn(out, y))
        if validation_loss < best_loss:
            best_loss, best_epoch, best_state = validation_loss, epoch, _copy_state(network)
        stats = EpochStats(epoch, total / len(training), validation_loss, best_epoch, best_loss)
        history.append(stats)
        if on_epoch is not None and on_epoch(stats) is True:
            break
        if epoch - best_epoch >= patience and epoch < epochs:
            stopped_early = True
            break
    network.load_state_dict(best_state)
    return TrainResult(
        epochs_run=len(history), best_epoch=best_epoch, best_validation_loss=best_loss,
        stopped_early=stopped_early, history=tuple(history), metrics=_scores(network, parts["test"]),
        device=str(device), samples={name: len(part) for name, part in parts.items()})


def _copy_state(network: Network) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in network.state_dict().items()}


def predict(network: Network, features_window_batch: np.ndarray) -> np.ndarray:
    """Return the network's prediction for each window ``(batch, lookback, n_features)``.

    ``direction`` networks give the probability that the price rises, ``return`` networks
    the expected log return; float64, shape ``(batch,)``. Runs where the network is.
    """
    batch = np.asarray(features_window_batch, dtype=np.float32)
    if batch.ndim != 3 or batch.shape[1:] != (network.lookback, network.n_features):
        raise Invalid(f"windows must have shape (batch, {network.lookback}, {network.n_features})",
                      field="features_window")
    if not np.all(np.isfinite(batch)):
        raise Invalid("windows must not hold NaN or infinity (warm-up rows?)",
                      field="features_window")
    device = next(network.parameters()).device
    network.eval()
    outs = []
    with torch.no_grad():
        for start in range(0, len(batch), EVAL_BATCH):
            x = torch.as_tensor(np.ascontiguousarray(batch[start:start + EVAL_BATCH]), device=device)
            out = network(x)
            outs.append(torch.sigmoid(out) if network.output == "direction" else out)
    if not outs:
        return np.empty(0, dtype=np.float64)
    return torch.cat(outs).cpu().numpy().astype(np.float64)
