"""A model's scores for bars, for strategies that trade on a model (`trading.strategy.Predictions`).

`BarScores` answers ``score(symbol, ts)`` from a table of scores. `score_bars` fills one
in-process, as a backtest does: each symbol's features are computed once over its bars,
and every window ending at a bar is predicted in batches; the score at a bar uses that bar
and the ones before it only (the features do not look ahead, and the window ends at the
bar). `latest_window` gives the last window of a short run of bars, as a live bot sends to
the model endpoint; its features start from that run, so on an EMA-based feature a live
score can differ slightly from the backtest's (the longer the run, the less).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np

from models.features import FeatureSpec, compute_features
from trading.instruments import Bar

if TYPE_CHECKING:  # torch stays out of processes that only read scores
    from models.artifacts import LoadedModel

BATCH = 4096


class BarScores:
    """Scores by (symbol, bar time); None for a bar without one (`trading.strategy.Predictions`)."""

    def __init__(self, scores: dict[tuple[str, datetime], float] | None = None) -> None:
        self._scores = dict(scores or {})

    def score(self, symbol: str, ts: datetime) -> float | None:
        return self._scores.get((symbol, ts))

    def __len__(self) -> int:
        return len(self._scores)


def latest_window(spec: FeatureSpec, lookback: int, bars: Sequence[Bar]) -> np.ndarray | None:
    """The features window ``(lookback, n_features)`` ending at the last of `bars` (one symbol,
    oldest first), or None when they are too few for the features' warm-up and the window."""
    if len(bars) < spec.warmup + lookback:
        return None
    features = compute_features(spec, bars)
    window = features[-lookback:]
    return window if np.all(np.isfinite(window)) else None


def score_bars(model: LoadedModel, bars: Iterable[Bar]) -> BarScores:
    """Score every bar of `bars` (any symbols, any order) that has a full window behind it."""
    by_symbol: dict[str, list[Bar]] = defaultdict(list)
    for bar in bars:
        by_symbol[bar.symbol].append(bar)
    scores: dict[tuple[str, datetime], float] = {}
    for symbol, series in by_symbol.items():
        series.sort(key=lambda b: b.ts)
        features = compute_features(model.spec, series)
        first = model.spec.warmup + model.lookback - 1  # the first bar with a full window
        ends = [e for e in range(first, len(series))
                if np.all(np.isfinite(features[e - model.lookback + 1:e + 1]))]
        for start in range(0, len(ends), BATCH):
            chunk = ends[start:start + BATCH]
            windows = np.stack([features[e - model.lookback + 1:e + 1] for e in chunk])
            for e, value in zip(chunk, model.predict(windows).tolist(), strict=True):
                scores[(symbol, series[e].ts)] = float(value)
    return BarScores(scores)
