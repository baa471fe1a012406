"""PyTorch networks over a window of feature rows.

Every network takes a float tensor ``(batch, lookback, n_features)``: the feature rows of
the last `lookback` bars, oldest first, as `models.features.compute_features` gives them.
It standardises them with its own buffers ``feature_mean`` and ``feature_std`` and returns
one number per window, shape ``(batch,)``: a logit for ``direction`` or a log return for
``return`` (the body's output times ``target_std`` plus ``target_mean``, so the body works
on unit scale). `models.training.train` sets the four buffers from the training part;
they are saved with the weights.

* `MLP`: the window flattened, then ``hidden`` fully connected ReLU layers with dropout.
* `TCN`: ``levels`` causal dilated 1-D convolutions (dilation 1, 2, 4, ...) with residual
  connections; the last time step's channels feed a linear head, so step ``t`` of the
  window only ever mixes steps ``<= t``.

`build_network` validates the architecture and its hyperparameters (`Invalid` naming the
bad one) and fills in defaults; ``network.hyper`` keeps the full, JSON-friendly set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.datasets import LABEL_KINDS
from models.hyper import HYPER, MAX_FEATURES, MAX_LOOKBACK, _integer, check_hyper
from trading.errors import Invalid


class Network(nn.Module):
    """A network over ``(batch, lookback, n_features)`` windows returning ``(batch,)``."""

    architecture: ClassVar[str]
    HYPER: ClassVar[dict[str, tuple[Any, Callable[[Any], Any]]]]  # name: (default, check)
    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    target_mean: torch.Tensor
    target_std: torch.Tensor

    def __init__(self, n_features: int, lookback: int, output: str, hyper: Mapping[str, Any]) -> None:
        super().__init__()
        self.n_features = n_features
        self.lookback = lookback
        self.output = output
        self.hyper = dict(hyper)
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """Map standardised windows ``(batch, lookback, n_features)`` to ``(batch, 1)``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return one logit or value per window, shape ``(batch,)``."""
        out = self.body((x - self.feature_mean) / self.feature_std).squeeze(-1)
        return out * self.target_std + self.target_mean

    def set_scaling(self, feature_mean: np.ndarray, feature_std: np.ndarray, *,
                    target_mean: float = 0.0, target_std: float = 1.0) -> None:
        """Standardise inputs with these per-feature means and deviations, scale the output.

        A deviation that is zero or not finite counts as 1.
        """
        std = np.where(np.isfinite(feature_std) & (feature_std > 0), feature_std, 1.0)
        if not (np.isfinite(target_std) and target_std > 0):
            target_std = 1.0
        with torch.no_grad():
            self.feature_mean.copy_(torch.as_tensor(feature_mean, dtype=self.feature_mean.dtype))
            self.feature_std.copy_(torch.as_tensor(std, dtype=self.feature_std.dtype))
            self.target_mean.fill_(float(target_mean))
            self.target_std.fill_(float(target_std))


class MLP(Network):
    """Fully connected layers over the flattened window."""

    architecture = "mlp"
    HYPER = HYPER["mlp"]

    def __init__(self, n_features: int, lookback: int, output: str, hyper: Mapping[str, Any]) -> None:
        super().__init__(n_features, lookback, output, hyper)
        layers: list[nn.Module] = [nn.Flatten()]
        width = n_features * lookback
        for size in hyper["hidden"]:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(hyper["dropout"])]
            width = size
        layers.append(nn.Linear(width, 1))
        self.layers = nn.Sequential(*layers)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _CausalBlock(nn.Module):
    """A dilated convolution that sees only the current and earlier steps, plus a residual."""

    def __init__(self, inputs: int, channels: int, kernel: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv = nn.Conv1d(inputs, channels, kernel, dilation=dilation)
        self.dropout = nn.Dropout(dropout)
        self.skip: nn.Module = nn.Conv1d(inputs, channels, 1) if inputs != channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dropout(torch.relu(self.conv(F.pad(x, (self.pad, 0)))))
        return torch.relu(y + self.skip(x))


class TCN(Network):
    """A small temporal convolution net: causal dilated convolutions over the window."""

    architecture = "tcn"
    HYPER = HYPER["tcn"]

    def __init__(self, n_features: int, lookback: int, output: str, hyper: Mapping[str, Any]) -> None:
        super().__init__(n_features, lookback, output, hyper)
        channels = hyper["channels"]
        self.blocks = nn.Sequential(*(
            _CausalBlock(n_features if level == 0 else channels, channels, hyper["kernel_size"],
                         2 ** level, hyper["dropout"])
            for level in range(hyper["levels"])))
        self.head = nn.Linear(channels, 1)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        steps = self.blocks(x.transpose(1, 2))  # (batch, channels, lookback)
        return self.head(steps[:, :, -1])


ARCHITECTURES: dict[str, type[Network]] = {"mlp": MLP, "tcn": TCN}


def build_network(architecture: str, n_features: int, lookback: int, output: str, *,
                  seed: int | None = None, **hyper: Any) -> Network:
    """Return a fresh network; with `seed`, its initial weights depend on the seed alone.

    `output` is the label kind: ``direction`` (one logit) or ``return`` (one value).
    """
    checked = check_hyper(architecture, hyper)
    n_features = _integer(n_features, "n_features", 1, MAX_FEATURES)
    lookback = _integer(lookback, "lookback", 1, MAX_LOOKBACK)
    if output not in LABEL_KINDS:
        raise Invalid(f"output must be one of {', '.join(LABEL_KINDS)}", field="output")
    cls = ARCHITECTURES[architecture]
    if seed is None:
        return cls(n_features, lookback, output, checked)
    seed = _integer(seed, "seed", 0, 2 ** 63 - 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(n_features, lookback, output, checked)
