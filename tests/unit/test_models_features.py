from __future__ import annotations

import ast
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from models.datasets import make_dataset, make_labels, time_split
from models.features import FEATURES, FeatureSpec, compute_features
from trading.builtin_strategies import wilder_rsi
from trading.data import SyntheticSource
from trading.errors import Invalid
from trading.instruments import Bar

START = datetime(2024, 3, 1, tzinfo=UTC)


def synthetic_bars(n: int = 400, seed: int = 11, symbol: str = "AAPL") -> list[Bar]:
    return list(SyntheticSource(seed=seed).bars([symbol], START, START + n * timedelta(minutes=1)))


def arrays(bars: list[Bar]) -> dict[str, np.ndarray]:
    return {"close": np.array([float(b.close) for b in bars]),
            "volume": np.array([float(b.volume) for b in bars])}


SPEC = FeatureSpec(return_horizons=(1, 5, 15), volatility_window=10, rsi_period=7, macd_fast=4,
                   macd_slow=9, macd_signal=3, volume_window=6)


# -- no look-ahead -------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0, 5, 17, 40, 150, 398])
def test_features_at_or_before_t_ignore_every_later_bar(t: int) -> None:
    data = arrays(synthetic_bars())
    before = compute_features(SPEC, data)
    rng = np.random.default_rng(t)
    future = {k: v.copy() for k, v in data.items()}
    later = slice(t + 1, None)
    future["close"][later] = rng.permutation(future["close"][later]) * rng.uniform(0.5, 2.0)
    future["volume"][later] = rng.permutation(future["volume"][later])[::-1] * 3 + 7
    after = compute_features(SPEC, future)
    assert np.array_equal(before[: t + 1], after[: t + 1], equal_nan=True)
    truncated = compute_features(SPEC, {k: v[: t + 1] for k, v in data.items()})
    assert np.array_equal(before[: t + 1], truncated, equal_nan=True)
    if t + 1 < len(before) and t + 1 >= SPEC.warmup:
        assert not np.array_equal(before[t + 1:], after[t + 1:], equal_nan=True)


def test_warm_up_rows_are_nan_and_the_first_complete_row_is_the_specs_warmup() -> None:
    features = compute_features(SPEC, arrays(synthetic_bars()))
    assert features.shape == (400, SPEC.n_features) == (400, len(SPEC.columns))
    complete = ~np.isnan(features).any(axis=1)
    assert SPEC.warmup == 15  # the longest return horizon
    assert not complete[: SPEC.warmup].any()
    assert complete[SPEC.warmup:].all()
    first_valid = {c: int(np.argmax(~np.isnan(features[:, i]))) for i, c in enumerate(SPEC.columns)}
    assert first_valid == {"log_return_1": 1, "log_return_5": 5, "log_return_15": 15,
                           "volatility_10": 10, "rsi_7": 7, "macd_line": 8, "macd_signal": 10,
                           "macd_hist": 10, "volume_z_6": 5}


def test_bars_and_arrays_give_the_same_features() -> None:
    bars = synthetic_bars(120)
    assert np.array_equal(compute_features(SPEC, bars), compute_features(SPEC, arrays(bars)),
                          equal_nan=True)


# -- values ------------------------------------------------------------------------------


def test_feature_values_match_their_definitions() -> None:
    bars = synthetic_bars(200)
    data = arrays(bars)
    close, volume = data["close"], data["volume"]
    f = dict(zip(SPEC.columns, compute_features(SPEC, data).T, strict=True))
    t = 150
    assert f["log_return_5"][t] == pytest.approx(np.log(close[t] / close[t - 5]), abs=1e-15)
    returns = np.diff(np.log(close))[t - 10:t]
    assert f["volatility_10"][t] == pytest.approx(np.std(returns, ddof=1), rel=1e-9)
    window = volume[t - 5:t + 1]
    assert f["volume_z_6"][t] == pytest.approx((volume[t] - window.mean()) / window.std(ddof=1),
                                               rel=1e-9)
    expected_rsi = [float(x) if x is not None else np.nan for x in wilder_rsi(list(close), 7)]
    assert np.allclose(f["rsi_7"], expected_rsi, rtol=1e-9, equal_nan=True)


def _ema_loop(values: list[float], n: int) -> list[float]:
    out = [float(np.mean(values[:n]))]
    for x in values[n:]:
        out.append(out[-1] + 2 / (n + 1) * (x - out[-1]))
    return out


def test_macd_is_the_ema_difference_over_the_slow_ema_with_its_signal() -> None:
    close = list(arrays(synthetic_bars(120))["close"])
    f = dict(zip(SPEC.columns, compute_features(SPEC, arrays(synthetic_bars(120))).T, strict=True))
    fast = _ema_loop(close, 4)[9 - 4:]  # align both EMAs on bar 8
    slow = _ema_loop(close, 9)
    line = [(a - b) / b for a, b in zip(fast, slow, strict=True)]
    signal = _ema_loop(line, 3)
    assert np.allclose(f["macd_line"][8:], line, rtol=1e-9, atol=1e-15)
    assert np.allclose(f["macd_signal"][10:], signal, rtol=1e-9, atol=1e-15)
    assert np.allclose(f["macd_hist"][10:], np.array(line[2:]) - np.array(signal), atol=1e-15)


def test_flat_volume_has_zero_z_score_and_flat_prices_an_rsi_of_50() -> None:
    data = {"close": np.full(50, 10.0), "volume": np.full(50, 5.0)}
    spec = FeatureSpec(features=("rsi", "volume_z"))
    f = compute_features(spec, data)
    assert np.all(f[spec.warmup:] == [50.0, 0.0])


def test_bad_input_names_the_field() -> None:
    bars = synthetic_bars(30) + synthetic_bars(30, symbol="MSFT")
    with pytest.raises(Invalid) as e:
        compute_features(SPEC, bars)
    assert e.value.field == "bars"
    with pytest.raises(Invalid) as e:
        compute_features(SPEC, {"close": [1.0, -1.0], "volume": [1.0, 1.0]})
    assert e.value.field == "close"
    with pytest.raises(Invalid) as e:
        compute_features(SPEC, {"close": [1.0, 2.0]})
    assert e.value.field == "volume"
    with pytest.raises(Invalid) as e:
        compute_features(SPEC, {"close": [1.0, 2.0], "volume": [1.0, float("nan")]})
    assert e.value.field == "volume"


# -- the spec ----------------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "field"), [
    ({"features": ("log_return", "sentiment")}, "features"),
    ({"features": ()}, "features"),
    ({"features": "rsi"}, "features"),
    ({"features": ("rsi", "rsi")}, "features"),
    ({"return_horizons": (1, 0)}, "return_horizons"),
    ({"return_horizons": (5, 5)}, "return_horizons"),
    ({"return_horizons": ()}, "return_horizons"),
    ({"volatility_window": 1}, "volatility_window"),
    ({"rsi_period": 0}, "rsi_period"),
    ({"rsi_period": True}, "rsi_period"),
    ({"rsi_period": 14.0}, "rsi_period"),
    ({"macd_fast": 26}, "macd_fast"),
    ({"macd_signal": 0}, "macd_signal"),
    ({"volume_window": 10**6}, "volume_window"),
])
def test_spec_validation_names_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(Invalid) as e:
        FeatureSpec(**changes)  # type: ignore[arg-type]
    assert e.value.field == field


def test_spec_json_round_trip() -> None:
    data = json.loads(json.dumps(SPEC.to_json()))
    assert data["features"] == list(FEATURES)
    assert FeatureSpec.from_json(data) == SPEC
    assert FeatureSpec.from_json({}) == FeatureSpec()
    with pytest.raises(Invalid) as e:
        FeatureSpec.from_json({"rsi_window": 3})
    assert e.value.field == "rsi_window"
    with pytest.raises(Invalid) as e:
        FeatureSpec.from_json({"features": ["macd", "volume"]})
    assert e.value.field == "features"
    with pytest.raises(Invalid) as e:
        FeatureSpec.from_json([])
    assert e.value.field == "feature_spec"


def test_columns_follow_the_order_of_features() -> None:
    spec = FeatureSpec(features=("volume_z", "log_return"), return_horizons=(3, 1))
    assert spec.columns == ("volume_z_20", "log_return_3", "log_return_1")
    assert spec.warmup == 19


# -- labels and the dataset --------------------------------------------------------------


def test_labels_look_horizon_bars_ahead_and_the_last_have_none() -> None:
    closes = np.array([10.0, 11.0, 10.5, 10.5, 12.0, 9.0])
    direction = make_labels(closes, 2, "direction")
    assert np.array_equal(direction, [1.0, 0.0, 1.0, 0.0, np.nan, np.nan], equal_nan=True)
    returns = make_labels(closes, 1, "return")
    assert np.allclose(returns[:-1], np.log(closes[1:] / closes[:-1]))
    assert np.isnan(returns[-1])
    assert np.isnan(make_labels(closes, 6, "direction")).all()
    with pytest.raises(Invalid) as e:
        make_labels(closes, 0, "direction")
    assert e.value.field == "horizon"
    with pytest.raises(Invalid) as e:
        make_labels(closes, 1, "price")
    assert e.value.field == "kind"


def test_dataset_aligns_each_rows_features_with_its_label() -> None:
    bars = synthetic_bars(300)
    data = arrays(bars)
    dataset = make_dataset(SPEC, bars, horizon=4, kind="return")
    assert dataset.rows[0] == SPEC.warmup and dataset.rows[-1] == 300 - 4 - 1
    assert np.array_equal(dataset.rows, np.arange(SPEC.warmup, 296))
    assert np.array_equal(dataset.X, compute_features(SPEC, data)[dataset.rows])
    close = data["close"]
    assert np.allclose(dataset.y, np.log(close[dataset.rows + 4] / close[dataset.rows]))
    assert not np.isnan(dataset.X).any() and not np.isnan(dataset.y).any()
    with pytest.raises(Invalid) as e:
        make_dataset(SPEC, bars[:19], horizon=4, kind="return")
    assert e.value.field == "bars"


def test_time_split_keeps_time_order_with_a_gap_of_the_horizon() -> None:
    dataset = make_dataset(SPEC, synthetic_bars(400), horizon=5, kind="direction")
    split = time_split(dataset, train=0.6, validation=0.2)
    parts = (split.train, split.validation, split.test)
    usable = len(dataset) - 2 * 5
    assert [len(p) for p in parts] == [int(usable * 0.6), int(usable * 0.2),
                                       usable - int(usable * 0.6) - int(usable * 0.2)]
    assert split.validation.rows[0] - split.train.rows[-1] == 5 + 1
    assert split.test.rows[0] - split.validation.rows[-1] == 5 + 1
    assert split.test.rows[-1] == dataset.rows[-1]
    for part in parts:
        assert np.all(np.diff(part.rows) == 1)
    flush = time_split(dataset, gap=0)
    assert flush.validation.rows[0] == flush.train.rows[-1] + 1


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"train": 0.0}, "train"), ({"train": 1}, "train"), ({"validation": -0.1}, "validation"),
    ({"train": 0.7, "validation": 0.3}, "validation"), ({"gap": -1}, "gap"),
    ({"gap": 1000}, "dataset"),
])
def test_time_split_validation_names_the_field(kwargs: dict[str, float], field: str) -> None:
    dataset = make_dataset(SPEC, synthetic_bars(100), horizon=1, kind="direction")
    with pytest.raises(Invalid) as e:
        time_split(dataset, **kwargs)  # type: ignore[arg-type]
    assert e.value.field == field


def test_decimal_prices_of_bars_become_floats() -> None:
    bar = synthetic_bars(1)[0]
    assert isinstance(bar.close, Decimal)
    assert compute_features(FeatureSpec(features=("log_return",), return_horizons=(1,)),
                            [bar]).shape == (1, 1)


# -- purity ------------------------------------------------------------------------------

CORE = ("features", "datasets", "metrics", "networks", "training", "artifacts")
OPERATIONAL = {"ray", "sqlalchemy", "asyncpg", "fastapi", "starlette", "redis", "stripe", "httpx",
               "psycopg", "tenancy", "actors", "serve", "billing", "agent"}


def _top_level_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_model_core_imports_nothing_operational_and_features_need_no_torch() -> None:
    root = Path(__file__).resolve().parents[2] / "models"
    imports = {name: _top_level_imports(root / f"{name}.py") for name in CORE}
    assert {name: found & OPERATIONAL for name, found in imports.items() if found & OPERATIONAL} == {}
    for name in ("features", "datasets", "metrics"):  # the gateway computes features without torch
        assert "torch" not in imports[name], name
