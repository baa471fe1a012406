"""Scores of a real (tiny, trained) network for backtests: `models.signals`."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import numpy as np
import pytest

from models.artifacts import LoadedModel, load_artifact, save_artifact
from models.datasets import make_dataset, time_split
from models.networks import build_network
from models.signals import BATCH, BarScores, latest_window, score_bars
from models.training import train

# The same tiny feature spec and window as the artifact tests, one torch thread per module.
from tests.unit.test_models_artifacts import LOOKBACK, SPEC, START, _one_thread  # noqa: F401
from trading.backtest import run_backtest
from trading.data import SyntheticSource
from trading.instruments import Bar


def series(symbol: str, n: int, seed: int = 5) -> list[Bar]:
    return list(SyntheticSource(seed=seed).bars([symbol], START, START + n * timedelta(minutes=1)))


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    bars = series("AAA", 300)
    network = build_network("mlp", SPEC.n_features, LOOKBACK, "direction", seed=1, hidden=(8,))
    train(network, time_split(make_dataset(SPEC, bars, horizon=2, kind="direction")), epochs=2,
          batch_size=32, lr=1e-2, patience=2, seed=0, device="cpu")
    artifact = save_artifact(network, SPEC, horizon=2)
    return load_artifact(artifact.blob, artifact.sha256)


def test_each_bar_is_scored_from_the_window_ending_at_it(model: LoadedModel) -> None:
    bars = series("AAA", 120)
    scores = score_bars(model, bars)
    first = SPEC.warmup + LOOKBACK - 1
    assert len(scores) == len(bars) - first
    assert scores.score("AAA", bars[first - 1].ts) is None and scores.score("BBB", bars[-1].ts) is None
    for end in (first, first + 1, 77, len(bars) - 1):
        expected = model.predict_latest(bars[:end + 1])
        assert scores.score("AAA", bars[end].ts) == pytest.approx(expected, abs=1e-6)
        window = latest_window(SPEC, LOOKBACK, bars[:end + 1])
        assert window is not None and window.shape == (LOOKBACK, SPEC.n_features)
    assert latest_window(SPEC, LOOKBACK, bars[:first]) is None


def test_no_score_reads_a_later_bar(model: LoadedModel) -> None:
    bars = series("AAA", 150)
    cut = 90
    changed = bars[:cut] + [replace(b, close=b.close * 2, high=b.high * 2, volume=b.volume * 7 + 1)
                            for b in bars[cut:]]
    before, after = score_bars(model, bars), score_bars(model, changed)
    for bar in bars[:cut]:
        assert before.score("AAA", bar.ts) == after.score("AAA", bar.ts)
    assert any(before.score("AAA", b.ts) != after.score("AAA", b.ts) for b in bars[cut:])


def test_symbols_are_scored_apart_in_any_order(model: LoadedModel) -> None:
    a, b = series("AAA", 80), series("BBB", 80, seed=9)
    merged = sorted(a + b, key=lambda bar: (bar.ts, bar.symbol), reverse=True)
    together, alone = score_bars(model, merged), score_bars(model, b)
    assert len(together) == 2 * len(alone)
    assert all(together.score("BBB", bar.ts) == alone.score("BBB", bar.ts) for bar in b)


def test_batches_give_what_one_batch_gives(model: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    bars = series("AAA", 200)
    whole = score_bars(model, bars)
    monkeypatch.setattr("models.signals.BATCH", 7)
    assert BATCH > 7
    small = score_bars(model, bars)
    assert all(np.isclose(whole.score("AAA", b.ts) or 0, small.score("AAA", b.ts) or 0) for b in bars)


def test_a_backtest_trades_on_the_scores(model: LoadedModel) -> None:
    bars = series("AAA", 300)
    scores = score_bars(model, bars)
    values = [s for b in bars if (s := scores.score("AAA", b.ts)) is not None]
    middle = float(np.median(values))
    result = run_backtest("model_signal", {"model": "m", "enter": middle + 1e-9, "exit": middle - 1e-9},
                          bars, capital=1_000_000, predictions=scores)
    assert result.fills, "a model whose scores cross their median trades"
    buys = [f for f in result.fills if f.side.value == "buy"]
    for fill in buys:  # each buy was decided on the bar before its fill, at a score above the median
        decided = bars[next(i for i, b in enumerate(bars) if b.ts == fill.ts) - 1]
        assert (scores.score("AAA", decided.ts) or 0) > middle
    assert isinstance(BarScores().score("AAA", START), type(None))
