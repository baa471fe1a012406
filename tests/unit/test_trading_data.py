from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trading.data import (
    DEFAULT_INSTRUMENTS,
    DEFAULT_START_PRICES,
    FileSource,
    MarketDataSource,
    SyntheticSource,
    load_bars,
)
from trading.errors import Invalid
from trading.instruments import Bar

D = Decimal
START = datetime(2024, 3, 1, tzinfo=UTC)
MIN = timedelta(minutes=1)


def synthetic(symbols: list[str], start: datetime, end: datetime, **kw: object) -> list[Bar]:
    return list(SyntheticSource(seed=7, **kw).bars(symbols, start, end))  # type: ignore[arg-type]


def log_returns(bars: list[Bar], symbol: str) -> np.ndarray:
    return np.diff(np.log([float(b.close) for b in bars if b.symbol == symbol]))


# -- synthetic ----------------------------------------------------------------------------


def test_synthetic_bars_are_deterministic_per_seed() -> None:
    end = START + 90 * MIN
    first = synthetic(["AAPL", "BTC-USD"], START, end)
    assert first == synthetic(["BTC-USD", "AAPL"], START, end)
    assert first != list(SyntheticSource(seed=8).bars(["AAPL", "BTC-USD"], START, end))
    assert len(first) == 180
    assert [(b.ts, b.symbol) for b in first] == sorted((b.ts, b.symbol) for b in first)
    assert first[0].ts == START and first[-1].ts == end - MIN  # start inclusive, end exclusive


def test_a_sub_range_gives_the_same_bars_as_the_full_range() -> None:
    end = START + timedelta(days=3)  # 4320 bars: spans generation blocks
    full = synthetic(["ETH-USD", "MSFT"], START, end)
    sub_start, sub_end = START + 1000 * MIN + timedelta(seconds=30), START + 4200 * MIN
    sub = synthetic(["ETH-USD", "MSFT"], sub_start, sub_end)
    assert sub == [b for b in full if sub_start <= b.ts < sub_end]
    assert sub[0].ts == START + 1001 * MIN  # aligned to the interval from the epoch
    only_msft = synthetic(["MSFT"], sub_start, sub_end)
    assert only_msft == [b for b in sub if b.symbol == "MSFT"]  # symbols are independent


def test_bars_are_consistent_aligned_and_on_the_grid_over_many_bars() -> None:
    interval = timedelta(minutes=5)
    bars = synthetic(list(DEFAULT_INSTRUMENTS), START, START + timedelta(days=20), interval=interval)
    assert len(bars) == 4 * 20 * 288
    last: dict[str, Bar] = {}
    for b in bars:
        instrument = DEFAULT_INSTRUMENTS[b.symbol]
        assert b.high >= max(b.open, b.close) and b.low <= min(b.open, b.close) and b.low > 0
        for px in (b.open, b.high, b.low, b.close):
            assert px % instrument.tick_size == 0
        assert b.volume > 0 and b.volume % instrument.lot_size == 0
        assert (b.ts - datetime(1970, 1, 1, tzinfo=UTC)) % interval == timedelta(0)
        if b.symbol in last:
            assert b.open == last[b.symbol].close
            assert b.ts == last[b.symbol].ts + interval
        last[b.symbol] = b


def test_prices_start_at_the_start_price_at_the_anchor_and_unknown_symbols_get_defaults() -> None:
    anchor = datetime(2024, 1, 1, tzinfo=UTC)
    bars = synthetic(["AAPL", "ZZZ"], anchor, anchor + MIN)
    assert [(b.symbol, b.open) for b in bars] == [("AAPL", DEFAULT_START_PRICES["AAPL"]),
                                                  ("ZZZ", D(100))]
    custom = synthetic(["AAPL"], anchor, anchor + MIN, start_prices={"AAPL": D("12.34")})
    assert custom[0].open == D("12.34")


def test_volatility_matches_the_daily_setting_and_symbols_are_uncorrelated() -> None:
    bars = synthetic(["AAPL", "MSFT"], START, START + timedelta(days=10), volatile_multiplier=1.0)
    aapl, msft = log_returns(bars, "AAPL"), log_returns(bars, "MSFT")
    assert 0.017 < aapl.std() * np.sqrt(1440) < 0.023
    assert abs(np.corrcoef(aapl, msft)[0, 1]) < 0.05


def _dispersion_of_hourly_volatility(multiplier: float) -> float:
    bars = synthetic(["AAPL"], START, START + timedelta(days=14), volatile_multiplier=multiplier)
    returns = log_returns(bars, "AAPL")
    hourly = returns[: len(returns) // 60 * 60].reshape(-1, 60).std(axis=1)
    return float(np.percentile(hourly, 90) / np.percentile(hourly, 10))


def test_regimes_change_volatility() -> None:
    assert _dispersion_of_hourly_volatility(1.0) < 1.5
    assert _dispersion_of_hourly_volatility(4.0) > 3.0


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"seed": -1}, "seed"), ({"seed": 1, "volatility": -0.1}, "volatility"),
    ({"seed": 1, "interval": timedelta(0)}, "interval"),
    ({"seed": 1, "regime_switch": 1.5}, "regime_switch"),
    ({"seed": 1, "volatile_multiplier": 0.5}, "volatile_multiplier"),
    ({"seed": 1, "drift": float("nan")}, "drift"),
])
def test_synthetic_settings_are_validated(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(Invalid) as err:
        SyntheticSource(**kwargs)  # type: ignore[arg-type]
    assert err.value.field == field


def test_synthetic_ranges_need_aware_times_and_distinct_symbols() -> None:
    source = SyntheticSource(seed=1)
    with pytest.raises(Invalid) as err:
        list(source.bars(["AAPL"], datetime(2024, 1, 1), START))
    assert err.value.field == "start"
    with pytest.raises(Invalid) as err:
        list(source.bars(["AAPL", "AAPL"], START, START + MIN))
    assert err.value.field == "symbols"
    assert list(source.bars(["AAPL"], START, START)) == []


# -- files --------------------------------------------------------------------------------


def _frame(bars: list[Bar]) -> pd.DataFrame:
    return pd.DataFrame({
        "ts": [b.ts.isoformat() for b in bars], "symbol": [b.symbol for b in bars],
        "open": [str(b.open) for b in bars], "high": [str(b.high) for b in bars],
        "low": [str(b.low) for b in bars], "close": [str(b.close) for b in bars],
        "volume": [str(b.volume) for b in bars],
    })


def test_csv_round_trip(tmp_path: Path) -> None:
    bars = synthetic(["AAPL", "BTC-USD"], START, START + 50 * MIN)
    path = tmp_path / "bars.csv"
    _frame(bars[::-1]).to_csv(path, index=False)  # unsorted on disk
    assert load_bars(path) == bars


def test_parquet_round_trip_with_native_types(tmp_path: Path) -> None:
    bars = synthetic(["ETH-USD", "MSFT"], START, START + 50 * MIN)
    frame = pd.DataFrame({
        "ts": pd.to_datetime([b.ts for b in bars], utc=True), "symbol": [b.symbol for b in bars],
        "open": [float(b.open) for b in bars], "high": [b.high for b in bars],  # floats and Decimals
        "low": [float(b.low) for b in bars], "close": [float(b.close) for b in bars],
        "volume": [float(b.volume) for b in bars],
    })
    path = tmp_path / "bars.parquet"
    frame.to_parquet(path)
    assert load_bars(path) == bars


def test_epoch_seconds_naive_times_and_the_symbol_argument(tmp_path: Path) -> None:
    path = tmp_path / "aapl.csv"
    path.write_text("TS,Open,High,Low,Close,Volume\n"
                    "1709251260,101,102,100,101.5,10\n"
                    "2024-03-01T00:00:00,100,101,99,101,20\n"
                    "2024-03-01 00:02:00+01:00,100,101,99,101,0\n")
    bars = load_bars(path, symbol="AAPL")
    assert [b.ts for b in bars] == [datetime(2024, 2, 29, 23, 2, tzinfo=UTC), START, START + MIN]
    assert bars[2].open == D(101) and bars[2].volume == D(10)
    with pytest.raises(Invalid) as err:
        load_bars(path)
    assert err.value.field == "columns" and "symbol" in err.value.message


def test_the_symbol_argument_filters_a_file_with_a_symbol_column(tmp_path: Path) -> None:
    bars = synthetic(["AAPL", "MSFT"], START, START + 5 * MIN)
    path = tmp_path / "two.csv"
    _frame(bars).to_csv(path, index=False)
    assert load_bars(path, symbol="MSFT") == [b for b in bars if b.symbol == "MSFT"]


def test_a_missing_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bars.parquet"
    _frame(synthetic(["AAPL"], START, START + 3 * MIN)).drop(columns=["volume"]).to_parquet(path)
    with pytest.raises(Invalid) as err:
        load_bars(path)
    assert err.value.field == "columns" and "volume" in err.value.message


@pytest.mark.parametrize(("row", "text"), [
    ("2024-03-01T00:01:00Z,AAPL,abc,101,99,100,5", "open"),
    ("yesterday,AAPL,100,101,99,100,5", "ts"),
    ("2024-03-01T00:01:00Z,AAPL,100,99,99.5,100,5", "high"),
    ("2024-03-01T00:01:00Z,aapl,100,101,99,100,5", "symbol"),
    ("2024-03-01T00:01:00Z,AAPL,100,101,99,100,", "volume"),
    ("2024-03-01T00:00:00+00:00,AAPL,100,101,99,100,5", "second AAPL bar"),
])
def test_bad_rows_are_named_by_number(tmp_path: Path, row: str, text: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("ts,symbol,open,high,low,close,volume\n"
                    "2024-03-01T00:00:00Z,AAPL,100,101,99,100,5\n" + row + "\n")
    with pytest.raises(Invalid) as err:
        load_bars(path)
    assert err.value.field == "row 2"
    assert text in err.value.message


def test_unsupported_or_missing_files_are_refused(tmp_path: Path) -> None:
    for name in ("bars.json", "absent.csv"):
        with pytest.raises(Invalid) as err:
            load_bars(tmp_path / name)
        assert err.value.field == "path"


def test_file_source_filters_by_symbol_and_range(tmp_path: Path) -> None:
    bars = synthetic(["AAPL", "BTC-USD", "MSFT"], START, START + 30 * MIN)
    path = tmp_path / "bars.csv"
    _frame(bars).to_csv(path, index=False)
    source: MarketDataSource = FileSource(path)
    got = list(source.bars(["MSFT", "AAPL"], START + 10 * MIN, START + 20 * MIN))
    assert got == [b for b in bars if b.symbol != "BTC-USD" and START + 10 * MIN <= b.ts < START + 20 * MIN]
    assert len(got) == 20
