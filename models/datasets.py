"""Labels, the aligned (X, y) dataset and its split in time.

* `make_labels`: what a model learns to predict at bar ``t`` from the next ``horizon``
  bars: ``direction`` (1.0 when ``close[t + horizon] > close[t]``, else 0.0) or ``return``
  (``log(close[t + horizon] / close[t])``). The last ``horizon`` bars have no label (NaN).
* `make_dataset`: features and labels of the same bars, without the warm-up rows (some
  feature undefined) and the unlabeled tail; ``rows`` keeps each row's bar index.
* `time_split`: train, validation and test parts in time order, never shuffled across
  time, with a gap of ``horizon`` rows between parts by default so that no training
  label looks at bars whose rows are validated or tested.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.features import BarsOrArrays, FeatureSpec, closes_of, compute_features
from trading.errors import Invalid

LABEL_KINDS = ("direction", "return")
MAX_HORIZON = 10_000


def check_label(kind: object, horizon: object) -> None:
    """Raise `Invalid` (field ``kind`` or ``horizon``) unless both name a valid label."""
    if kind not in LABEL_KINDS:
        raise Invalid(f"label kind must be one of {', '.join(LABEL_KINDS)}", field="kind")
    if isinstance(horizon, bool) or not isinstance(horizon, int) or not 1 <= horizon <= MAX_HORIZON:
        raise Invalid(f"horizon must be an integer from 1 to {MAX_HORIZON}", field="horizon")


def make_labels(closes: np.ndarray, horizon: int, kind: str) -> np.ndarray:
    """Return the label of every bar (float64, NaN for the last `horizon` bars)."""
    check_label(kind, horizon)
    close = np.asarray(closes, dtype=np.float64)
    if close.ndim != 1 or not np.all(np.isfinite(close)) or np.any(close <= 0):
        raise Invalid("closes must be a 1-D array of finite positive prices", field="closes")
    labels = np.full(len(close), np.nan)
    if len(close) > horizon:
        now, later = close[:-horizon], close[horizon:]
        if kind == "direction":
            labels[:-horizon] = (later > now).astype(np.float64)
        else:
            labels[:-horizon] = np.log(later) - np.log(now)
    return labels


@dataclass(frozen=True, eq=False)
class Dataset:
    """Aligned rows: ``X[i]`` are the features of bar ``rows[i]`` and ``y[i]`` its label."""

    X: np.ndarray  # (n, n_features) float64
    y: np.ndarray  # (n,) float64
    rows: np.ndarray  # (n,) int64, bar index of each row, increasing
    kind: str
    horizon: int

    def __len__(self) -> int:
        return len(self.y)

    def part(self, start: int, stop: int) -> Dataset:
        """Return rows ``start..stop - 1`` (a view, in time order)."""
        return Dataset(self.X[start:stop], self.y[start:stop], self.rows[start:stop],
                       self.kind, self.horizon)


@dataclass(frozen=True, eq=False)
class Split:
    """Train, validation and test parts of one dataset, in time order."""

    train: Dataset
    validation: Dataset
    test: Dataset


def make_dataset(spec: FeatureSpec, data: BarsOrArrays, *, horizon: int, kind: str) -> Dataset:
    """Return the rows of `data` that have every feature and a label."""
    check_label(kind, horizon)
    X = compute_features(spec, data)
    y = make_labels(closes_of(data), horizon, kind)
    start, stop = spec.warmup, len(y) - horizon
    if stop <= start:
        raise Invalid(f"need more than {spec.warmup + horizon} bars for these features and "
                      f"horizon, got {len(y)}", field="bars")
    rows = np.arange(start, stop, dtype=np.int64)
    return Dataset(X[start:stop], y[start:stop], rows, kind, horizon)


def _fraction(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise Invalid(f"{name} must be a fraction strictly between 0 and 1", field=name)
    return float(value)


def time_split(dataset: Dataset, *, train: float = 0.7, validation: float = 0.15,
               gap: int | None = None) -> Split:
    """Split `dataset` in time: the first `train` of its rows, then `validation`, then the rest.

    `gap` rows are dropped before the validation and before the test part (default: the
    label horizon, so that labels of one part never see the next part's bars).
    """
    a, b = _fraction(train, "train"), _fraction(validation, "validation")
    if a + b >= 1:
        raise Invalid("train and validation must leave a test part", field="validation")
    gap = dataset.horizon if gap is None else gap
    if isinstance(gap, bool) or not isinstance(gap, int) or gap < 0:
        raise Invalid("gap must be a non-negative integer", field="gap")
    n = len(dataset)
    usable = n - 2 * gap
    n_train, n_validation = int(usable * a), int(usable * b)
    if usable < 3 or min(n_train, n_validation, usable - n_train - n_validation) < 1:
        raise Invalid(f"{n} rows are too few to split with a gap of {gap}", field="dataset")
    v0 = n_train + gap
    t0 = v0 + n_validation + gap
    return Split(dataset.part(0, n_train), dataset.part(v0, v0 + n_validation),
                 dataset.part(t0, n))
