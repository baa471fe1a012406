"""Features of one symbol's bars, computed without look-ahead.

A `FeatureSpec` names the features and their windows; `compute_features` turns bars (or
close and volume arrays) into a float matrix with one row per bar and one column per
`FeatureSpec.columns` entry. Every value at bar ``t`` is a function of bars ``0..t`` only,
so a model fed row ``t`` never sees the future; the first `FeatureSpec.warmup` rows hold
NaN where a window is not yet full.

Features (the names `FeatureSpec.features` may hold):

* ``log_return``: ``log(close[t] / close[t - h])`` for each ``h`` in ``return_horizons``.
* ``volatility``: the sample standard deviation of the last ``volatility_window`` one-bar
  log returns.
* ``rsi``: Wilder's RSI over ``rsi_period`` (0..100, as `trading.builtin_strategies.WilderRsi`).
* ``macd``: line, signal and histogram of MACD(``macd_fast``, ``macd_slow``, ``macd_signal``),
  divided by the slow EMA so that symbols of any price level compare. Each EMA starts as
  the plain mean of its first window.
* ``volume_z``: ``(volume[t] - mean) / std`` over the last ``volume_window`` volumes
  (this bar included), 0 when the volume did not change.

This module needs numpy and pandas only (no torch), so the gateway can compute features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

from trading.errors import Invalid
from trading.instruments import Bar

FEATURES = ("log_return", "volatility", "rsi", "macd", "volume_z")
MAX_WINDOW = 10_000
MAX_HORIZONS = 16

BarsOrArrays: TypeAlias = Sequence[Bar] | Mapping[str, Any] | pd.DataFrame


def _window(value: Any, name: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= MAX_WINDOW:
        raise Invalid(f"{name} must be an integer from {least} to {MAX_WINDOW}", field=name)
    return value


@dataclass(frozen=True)
class FeatureSpec:
    """Which features to compute, in which column order, and their windows (in bars)."""

    features: tuple[str, ...] = FEATURES
    return_horizons: tuple[int, ...] = (1, 5, 15)
    volatility_window: int = 20
    rsi_period: int = 14
    macd_fast: int = 12
    macd_slow: int = 26
    macd_signal: int = 9
    volume_window: int = 20
    _columns: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Validate every field; raise `Invalid` naming the first bad one."""
        names = self.features
        if isinstance(names, str) or not isinstance(names, Sequence) or not names:
            raise Invalid("features must be a non-empty list of feature names", field="features")
        for name in names:
            if name not in FEATURES:
                raise Invalid(f"unknown feature {name!r}; known: {', '.join(FEATURES)}",
                              field="features")
        if len(set(names)) != len(names):
            raise Invalid("features must not repeat", field="features")
        horizons = self.return_horizons
        if isinstance(horizons, str) or not isinstance(horizons, Sequence) \
                or not 1 <= len(horizons) <= MAX_HORIZONS:
            raise Invalid(f"return_horizons must be a list of 1 to {MAX_HORIZONS} horizons",
                          field="return_horizons")
        for h in horizons:
            _window(h, "return_horizons", 1)
        if len(set(horizons)) != len(horizons):
            raise Invalid("return_horizons must not repeat", field="return_horizons")
        _window(self.volatility_window, "volatility_window", 2)
        _window(self.rsi_period, "rsi_period", 1)
        _window(self.macd_fast, "macd_fast", 1)
        _window(self.macd_slow, "macd_slow", 2)
        _window(self.macd_signal, "macd_signal", 1)
        _window(self.volume_window, "volume_window", 2)
        if self.macd_fast >= self.macd_slow:
            raise Invalid("macd_fast must be shorter than macd_slow", field="macd_fast")
        object.__setattr__(self, "features", tuple(names))
        object.__setattr__(self, "return_horizons", tuple(horizons))
        object.__setattr__(self, "_columns", tuple(c for n in self.features for c in self._named(n)))

    def _named(self, feature: str) -> tuple[str, ...]:
        if feature == "log_return":
            return tuple(f"log_return_{h}" for h in self.return_horizons)
        if feature == "volatility":
            return (f"volatility_{self.volatility_window}",)
        if feature == "rsi":
            return (f"rsi_{self.rsi_period}",)
        if feature == "macd":
            return ("macd_line", "macd_signal", "macd_hist")
        return (f"volume_z_{self.volume_window}",)

    def _warmup(self, feature: str) -> int:
        if feature == "log_return":
            return max(self.return_horizons)
        if feature == "volatility":
            return self.volatility_window
        if feature == "rsi":
            return self.rsi_period
        if feature == "macd":
            return self.macd_slow + self.macd_signal - 2
        return self.volume_window - 1

    @property
    def columns(self) -> tuple[str, ...]:
        """Return the column names, in the order `compute_features` fills them."""
        return self._columns

    @property
    def n_features(self) -> int:
        """Return the number of columns."""
        return len(self._columns)

    @property
    def warmup(self) -> int:
        """Return the index of the first row with every column defined."""
        return max(self._warmup(f) for f in self.features)

    def to_json(self) -> dict[str, Any]:
        """Return the spec as JSON-friendly values (lists for tuples)."""
        data = asdict(self)
        data.pop("_columns")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_json(cls, data: Any) -> FeatureSpec:
        """Build a spec from `to_json` output; missing keys take their defaults."""
        if not isinstance(data, Mapping):
            raise Invalid("a feature spec must be an object", field="feature_spec")
        known = {f.name for f in fields(cls) if f.init}
        for key in data:
            if key not in known:
                raise Invalid(f"unknown feature spec key {key!r}", field=str(key))
        values = dict(data)
        for key in ("features", "return_horizons"):
            if key in values and isinstance(values[key], list):
                values[key] = tuple(values[key])
        return cls(**values)


# -- computing ---------------------------------------------------------------------------


def _arrays(data: BarsOrArrays) -> tuple[np.ndarray, np.ndarray]:
    """Return (close, volume) as float64 arrays, checked."""
    if isinstance(data, pd.DataFrame | Mapping):
        for key in ("close", "volume"):
            if key not in data:
                raise Invalid(f"the arrays need a {key!r} column", field=key)
        try:
            close = np.asarray(data["close"], dtype=np.float64)
            volume = np.asarray(data["volume"], dtype=np.float64)
        except (TypeError, ValueError):
            raise Invalid("close and volume must be numbers", field="close") from None
    elif isinstance(data, Sequence) and not isinstance(data, str):
        if not all(isinstance(b, Bar) for b in data):
            raise Invalid("bars must be a list of Bar", field="bars")
        if len({b.symbol for b in data}) > 1:
            raise Invalid("bars must be of one symbol", field="bars")
        close = np.array([float(b.close) for b in data], dtype=np.float64)
        volume = np.array([float(b.volume) for b in data], dtype=np.float64)
    else:
        raise Invalid("pass a list of bars, or close and volume arrays", field="bars")
    if close.ndim != 1 or volume.shape != close.shape:
        raise Invalid("close and volume must be 1-D arrays of one length", field="close")
    if not np.all(np.isfinite(close)) or np.any(close <= 0):
        raise Invalid("close must be finite and positive", field="close")
    if not np.all(np.isfinite(volume)) or np.any(volume < 0):
        raise Invalid("volume must be finite and non-negative", field="volume")
    return close, volume


def _ema(values: np.ndarray, n: int, start: int) -> np.ndarray:
    """Return the EMA over `n` of values[start:], seeded with their first `n`'s mean."""
    out = np.full(len(values), np.nan)
    seed_at = start + n - 1
    if seed_at >= len(values):
        return out
    tail = values[seed_at:].copy()
    tail[0] = values[start:seed_at + 1].mean()
    out[seed_at:] = pd.Series(tail).ewm(alpha=2.0 / (n + 1), adjust=False).mean().to_numpy()
    return out


def _wilder(values: np.ndarray, n: int) -> np.ndarray:
    """Return Wilder's average of values[1:], seeded with the mean of values[1:n + 1]."""
    out = np.full(len(values), np.nan)
    if n >= len(values):
        return out
    tail = values[n:].copy()
    tail[0] = values[1:n + 1].mean()
    out[n:] = pd.Series(tail).ewm(alpha=1.0 / n, adjust=False).mean().to_numpy()
    return out


def _rsi(close: np.ndarray, period: int) -> np.ndarray:
    change = np.diff(close, prepend=close[:1])
    gain = _wilder(np.maximum(change, 0.0), period)
    loss = _wilder(np.maximum(-change, 0.0), period)
    with np.errstate(divide="ignore", invalid="ignore"):
        rsi = 100.0 - 100.0 / (1.0 + gain / loss)
    rsi = np.where(loss == 0, np.where(gain > 0, 100.0, 50.0), rsi)
    return np.where(np.isnan(gain), np.nan, rsi)


def _rolling_std(values: np.ndarray, window: int) -> np.ndarray:
    return pd.Series(values).rolling(window, min_periods=window).std(ddof=1).to_numpy()


def _columns(spec: FeatureSpec, feature: str, close: np.ndarray, volume: np.ndarray
             ) -> list[np.ndarray]:
    n = len(close)
    log_close = np.log(close)
    if feature == "log_return":
        out = []
        for h in spec.return_horizons:
            column = np.full(n, np.nan)
            column[h:] = log_close[h:] - log_close[:-h]
            out.append(column)
        return out
    if feature == "volatility":
        returns = np.diff(log_close, prepend=np.nan)
        return [_rolling_std(returns, spec.volatility_window)]
    if feature == "rsi":
        return [_rsi(close, spec.rsi_period)]
    if feature == "macd":
        slow = _ema(close, spec.macd_slow, 0)
        line = (_ema(close, spec.macd_fast, 0) - slow) / slow
        signal = _ema(line, spec.macd_signal, spec.macd_slow - 1)
        return [line, signal, line - signal]
    w = spec.volume_window
    mean = pd.Series(volume).rolling(w, min_periods=w).mean().to_numpy()
    std = _rolling_std(volume, w)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (volume - mean) / std
    return [np.where(std == 0, 0.0, z)]  # pandas gives exactly 0 for a window of equal values


def compute_features(spec: FeatureSpec, data: BarsOrArrays) -> np.ndarray:
    """Return the features of one symbol's bars: shape ``(n_bars, spec.n_features)``, float64.

    `data` is a list of `Bar` of one symbol in time order, or a mapping (or DataFrame)
    with ``close`` and ``volume`` arrays. Row ``t`` depends on bars ``0..t`` only; rows
    before ``spec.warmup`` hold NaN in the columns whose windows are not yet full.
    """
    close, volume = _arrays(data)
    columns = [c for f in spec.features for c in _columns(spec, f, close, volume)]
    return np.column_stack(columns) if columns else np.empty((len(close), 0))


def closes_of(data: BarsOrArrays) -> np.ndarray:
    """Return the closes of `data` (bars or arrays, as `compute_features` takes) as float64."""
    return _arrays(data)[0]

