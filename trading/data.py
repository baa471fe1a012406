"""Market-data sources: a seeded synthetic generator, and CSV or Parquet files.

A `MarketDataSource` yields `Bar`s in time order across symbols (ties by symbol), from
`start` inclusive to `end` exclusive.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import re
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from trading.errors import Invalid
from trading.instruments import Bar, Instrument, validate_symbol
from trading.values import price, to_decimal

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ANCHOR = datetime(2024, 1, 1, tzinfo=UTC)  # where a synthetic price sits at its start price
BLOCK = 4096  # bars generated together from one random stream
SUPER = 4096  # blocks whose total moves come from one random stream
DAILY_NOTIONAL = 100_000_000.0  # synthetic traded value per symbol and day
DEFAULT_TICK = Decimal("0.01")
DEFAULT_LOT = Decimal(1)
DEFAULT_START_PRICE = Decimal(100)

DEFAULT_INSTRUMENTS: dict[str, Instrument] = {
    "BTC-USD": Instrument("BTC-USD", Decimal("0.01"), Decimal("0.0001")),
    "ETH-USD": Instrument("ETH-USD", Decimal("0.01"), Decimal("0.001")),
    "AAPL": Instrument("AAPL", Decimal("0.01"), Decimal(1)),
    "MSFT": Instrument("MSFT", Decimal("0.01"), Decimal(1)),
}
DEFAULT_START_PRICES: dict[str, Decimal] = {
    "BTC-USD": Decimal(60000), "ETH-USD": Decimal(3000), "AAPL": Decimal(190),
    "MSFT": Decimal(420),
}


class MarketDataSource(Protocol):
    """Where bars come from."""

    def bars(self, symbols: Sequence[str], start: datetime, end: datetime) -> Iterator[Bar]:
        """Yield the bars of `symbols` in [start, end), by (ts, symbol)."""
        ...


def _aware(ts: Any, field: str) -> datetime:
    if not isinstance(ts, datetime) or ts.tzinfo is None:
        raise Invalid(f"{field} must be a timezone-aware datetime", field=field)
    return ts.astimezone(UTC)


def _symbols(symbols: Sequence[str]) -> list[str]:
    if isinstance(symbols, str):
        raise Invalid("symbols must be a list of symbols", field="symbols")
    checked = [validate_symbol(s) for s in symbols]
    if len(set(checked)) != len(checked):
        raise Invalid("symbols must not repeat", field="symbols")
    return sorted(checked)


def _zigzag(n: int) -> int:
    return 2 * n if n >= 0 else -2 * n - 1


class SyntheticSource:
    """Seeded geometric Brownian motion with a two-state (calm/volatile) Markov regime.

    Each bar's log return is normal with mean ``drift`` (the mean daily log return, spread
    over the day's bars) and a per-bar standard deviation set by the regime: the calm and
    the volatile regime differ by the factor ``volatile_multiplier``, scaled so that the
    long-run daily volatility is ``volatility``. The regime switches with probability
    ``regime_switch`` at each bar (1 / regime_switch bars is the mean regime length).
    ``volatile_multiplier=1`` gives plain GBM. Volume is log-normal around a daily traded
    value of 100M (higher in the volatile regime), floored to the lot, at least one lot.
    Prices are rounded to the instrument's tick (unknown symbols: tick 0.01, lot 1, start
    price 100): open and close half-even, high up and low down, so OHLC stay consistent,
    and each bar opens at the previous bar's close.

    Determinism without look-back: bar ``i`` starts at ``EPOCH + i * interval``. Bars are
    made in blocks of 4096 from a random stream keyed by (seed, symbol digest, block), so
    any range yields the same bars as a wider one and symbols are independent. A block
    needs its starting price without simulating everything before it, so each block's
    total log move is drawn first (normal with the long-run mean and variance, 4096 blocks
    per stream keyed by (seed, symbol digest, group)); the bars inside a block are then a
    Brownian bridge to that total (exact given the block's regime path, so each regime
    keeps its volatility). Levels are shifted per symbol so that the bar holding ``ANCHOR``
    (2024-01-01 UTC) opens at the start price. Each block draws its first regime afresh (calm
    or volatile, even odds), a negligible seam when regimes are shorter than a block.
    """

    def __init__(self, *, seed: int, instruments: Mapping[str, Instrument] | None = None,
                 start_prices: Mapping[str, Decimal] | None = None,
                 interval: timedelta = timedelta(minutes=1), drift: float = 0.0,
                 volatility: float = 0.02, regime_switch: float = 0.002,
                 volatile_multiplier: float = 3.0) -> None:
        """Validate the parameters: see the class docstring for their meaning."""
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise Invalid("seed must be a non-negative integer", field="seed")
        if not isinstance(interval, timedelta) or interval <= timedelta(0):
            raise Invalid("interval must be a positive timedelta", field="interval")
        checks = {"drift": (drift, -math.inf), "volatility": (volatility, 0.0),
                  "regime_switch": (regime_switch, 0.0), "volatile_multiplier": (volatile_multiplier, 1.0)}
        for name, (value, least) in checks.items():
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value) or value < least:
                raise Invalid(f"{name} must be a finite number of at least {least}", field=name)
        if regime_switch > 1:
            raise Invalid("regime_switch must be a probability", field="regime_switch")
        self.seed = seed
        self.interval = interval
        self.drift, self.volatility = float(drift), float(volatility)
        self.regime_switch, self.volatile_multiplier = float(regime_switch), float(volatile_multiplier)
        self.instruments = dict(DEFAULT_INSTRUMENTS if instruments is None else instruments)
        self.start_prices = {s: price(p, field=f"start_prices[{s}]") for s, p in
                             (DEFAULT_START_PRICES if start_prices is None else start_prices).items()}
        bars_per_day = timedelta(days=1) / interval
        self._bars_per_day = bars_per_day
        self._mu = self.drift / bars_per_day
        self._sigma = self.volatility / math.sqrt(bars_per_day)
        calm = self._sigma * math.sqrt(2.0 / (1.0 + self.volatile_multiplier ** 2))
        self._vols = (calm, calm * self.volatile_multiplier)
        self._groups: dict[tuple[str, int], np.ndarray] = {}
        self._shifts: dict[str, float] = {}

    def bars(self, symbols: Sequence[str], start: datetime, end: datetime) -> Iterator[Bar]:
        """Yield the bars of `symbols` in [start, end), by (ts, symbol)."""
        names = _symbols(symbols)
        first = -((EPOCH - _aware(start, "start")) // self.interval)  # ceil
        stop = -((EPOCH - _aware(end, "end")) // self.interval)
        streams = [self._symbol_bars(s, first, stop) for s in names]
        return heapq.merge(*streams, key=lambda bar: (bar.ts, bar.symbol))

    # -- internals --------------------------------------------------------------------------

    def _instrument(self, symbol: str) -> Instrument:
        return self.instruments.get(symbol) or Instrument(symbol, DEFAULT_TICK, DEFAULT_LOT)

    def _rng(self, symbol: str, kind: int, index: int) -> np.random.Generator:
        digest = int.from_bytes(hashlib.blake2b(symbol.encode(), digest_size=8).digest(), "big")
        return np.random.default_rng([self.seed, digest, kind, _zigzag(index)])

    def _group(self, symbol: str, group: int) -> np.ndarray:
        """Return 0 followed by the running sums of a group's standard-normal block moves."""
        key = (symbol, group)
        if key not in self._groups:
            draws = self._rng(symbol, 1, group).standard_normal(SUPER)
            self._groups[key] = np.concatenate(([0.0], np.cumsum(draws)))
        return self._groups[key]

    def _prefix(self, symbol: str, block: int) -> float:
        """Return the sum of the standard-normal block moves from block 0 up to `block`."""
        group, offset = divmod(block, SUPER)
        if group >= 0:
            total = sum(float(self._group(symbol, g)[-1]) for g in range(group))
        else:
            total = -sum(float(self._group(symbol, g)[-1]) for g in range(group, 0))
        return total + float(self._group(symbol, group)[offset])

    def _level(self, symbol: str, block: int) -> float:
        """Return the log price at the start of `block`."""
        if symbol not in self._shifts:
            anchor = (ANCHOR - EPOCH) // self.interval
            home, k = divmod(anchor, BLOCK)
            rises = self._path(symbol, home)[1]
            opening = self._drift_level(symbol, home) + (float(rises[k - 1]) if k else 0.0)
            start = self.start_prices.get(symbol, DEFAULT_START_PRICE)
            self._shifts[symbol] = math.log(start) - opening
        return self._drift_level(symbol, block) + self._shifts[symbol]

    def _drift_level(self, symbol: str, block: int) -> float:
        """Return the log price at the start of `block`, up to a per-symbol constant."""
        return self._mu * BLOCK * block + self._sigma * math.sqrt(BLOCK) * self._prefix(symbol, block)

    def _path(self, symbol: str, block: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Return a block's per-bar volatility, log closes less its opening level, and noise."""
        rng = self._rng(symbol, 0, block)
        first = int(rng.random() < 0.5)
        switches = rng.random(BLOCK) < self.regime_switch
        switches[0] = False
        regime = (np.cumsum(switches) + first) % 2
        vol = np.where(regime == 1, self._vols[1], self._vols[0])
        z, up, down, noise = (rng.standard_normal(BLOCK) for _ in range(4))
        steps = self._mu + vol * z
        variance = vol ** 2
        total = self._drift_level(symbol, block + 1) - self._drift_level(symbol, block)
        if variance.sum() > 0:  # bridge: the exact conditional law given the block's total
            steps += variance / variance.sum() * (total - steps.sum())
        return vol, np.cumsum(steps), [up, down, noise]

    def _block(self, symbol: str, block: int, instrument: Instrument) -> list[np.ndarray]:
        """Return open, high, low, close (in ticks) and volume (in lots) of a block's bars."""
        vol, rises, (up, down, noise) = self._path(symbol, block)
        level = self._level(symbol, block)
        close = level + rises
        open_ = np.concatenate(([level], close[:-1]))
        high = np.maximum(open_, close) + 0.5 * vol * np.abs(up)
        low = np.minimum(open_, close) - 0.5 * vol * np.abs(down)
        tick = float(instrument.tick_size)
        o = np.maximum(1.0, np.rint(np.exp(open_) / tick))
        c = np.maximum(1.0, np.rint(np.exp(close) / tick))
        h = np.maximum(np.ceil(np.exp(high) / tick), np.maximum(o, c))
        lo = np.maximum(1.0, np.minimum(np.floor(np.exp(low) / tick), np.minimum(o, c)))
        start = float(self.start_prices.get(symbol, DEFAULT_START_PRICE))
        units = DAILY_NOTIONAL / self._bars_per_day / start
        busier = vol / self._vols[0] if self._vols[0] > 0 else 1.0
        volume = units * np.exp(0.5 * noise - 0.125) * busier
        lots = np.maximum(1.0, np.floor(volume / float(instrument.lot_size)))
        return [a.astype(np.int64) for a in (o, h, lo, c, lots)]

    def _symbol_bars(self, symbol: str, first: int, stop: int) -> Iterator[Bar]:
        instrument = self._instrument(symbol)
        tick, lot = instrument.tick_size, instrument.lot_size
        for block in range(first // BLOCK, (stop - 1) // BLOCK + 1):
            base = block * BLOCK
            o, h, lo, c, v = self._block(symbol, block, instrument)
            for j in range(max(first, base) - base, min(stop, base + BLOCK) - base):
                yield Bar(symbol, EPOCH + (base + j) * self.interval, Decimal(int(o[j])) * tick,
                          Decimal(int(h[j])) * tick, Decimal(int(lo[j])) * tick,
                          Decimal(int(c[j])) * tick, Decimal(int(v[j])) * lot)


# -- files -----------------------------------------------------------------------------------

COLUMNS = ("ts", "open", "high", "low", "close", "volume")
_EPOCH_SECONDS = re.compile(r"[+-]?\d+(\.\d*)?")


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _ts(value: Any) -> datetime:
    """Parse ISO-8601 text, epoch seconds or a timestamp; naive means UTC."""
    if _missing(value):
        raise Invalid("ts is empty", field="ts")
    if isinstance(value, np.generic) and not isinstance(value, np.datetime64):
        value = value.item()
    try:
        if isinstance(value, pd.Timestamp | np.datetime64):
            value = pd.Timestamp(value).to_pydatetime()
        elif isinstance(value, str) and not _EPOCH_SECONDS.fullmatch(value.strip()):
            value = datetime.fromisoformat(value.strip())
        if not isinstance(value, datetime):
            if isinstance(value, bool):
                raise TypeError("a boolean is not a time")
            value = datetime.fromtimestamp(float(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        raise Invalid(f"ts {value!r} is neither ISO-8601 nor epoch seconds", field="ts") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _number(value: Any, field: str) -> Decimal:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        value = value.strip()
    return to_decimal(value, field=field)


def _read(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise Invalid(f"{path.name}: only .csv and .parquet files are supported", field="path")
    if not path.is_file():
        raise Invalid(f"{path} does not exist", field="path")
    try:
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        return pd.read_parquet(path)
    except (ValueError, OSError) as exc:
        raise Invalid(f"cannot read {path.name}: {exc}", field="path") from None


def load_bars(path: str | Path, *, symbol: str | None = None) -> list[Bar]:
    """Read bars from a CSV or Parquet file (chosen by suffix), sorted by (ts, symbol).

    Columns (any case): ts (ISO-8601 or epoch seconds; naive means UTC), open, high, low,
    close, volume, and symbol unless `symbol` is given. When both are there, only the
    rows of `symbol` are kept. Rows are numbered from 1 (the first row after the header)
    in errors: field ``"columns"`` for a missing column, ``f"row {n}"`` for a bad or
    duplicate (symbol, ts) row.
    """
    if symbol is not None:
        validate_symbol(symbol)
    frame = _read(Path(path))
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    repeated = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if repeated:
        raise Invalid(f"repeated column(s): {', '.join(repeated)}", field="columns")
    needed = COLUMNS if symbol is not None else (*COLUMNS, "symbol")
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise Invalid(f"missing column(s): {', '.join(missing)}", field="columns")
    has_symbol = "symbol" in frame.columns
    rows = frame[[*COLUMNS, "symbol"] if has_symbol else list(COLUMNS)]
    loaded: list[tuple[Bar, int]] = []
    for n, row in enumerate(rows.itertuples(index=False, name=None), start=1):
        try:
            name = symbol if not has_symbol else str(row[6]).strip()
            if symbol is not None and name != symbol:
                continue
            bar = Bar(validate_symbol(name), _ts(row[0]), *(
                _number(v, c) for v, c in zip(row[1:6], COLUMNS[1:], strict=True)))
        except Invalid as exc:
            raise Invalid(f"row {n}: {exc.message}", field=f"row {n}") from None
        loaded.append((bar, n))
    loaded.sort(key=lambda item: (item[0].ts, item[0].symbol, item[1]))
    for (prev, _), (bar, n) in pairwise(loaded):
        if (prev.ts, prev.symbol) == (bar.ts, bar.symbol):
            raise Invalid(f"row {n}: a second {bar.symbol} bar at {bar.ts.isoformat()}",
                          field=f"row {n}")
    return [bar for bar, _ in loaded]


class FileSource(MarketDataSource):
    """Bars read once from a CSV or Parquet file (see `load_bars`)."""

    def __init__(self, path: str | Path, *, symbol: str | None = None) -> None:
        """Load and validate the whole file now, so errors surface at once."""
        self.path = Path(path)
        self._bars = load_bars(self.path, symbol=symbol)
        self._times = [bar.ts for bar in self._bars]

    def bars(self, symbols: Sequence[str], start: datetime, end: datetime) -> Iterator[Bar]:
        """Yield the file's bars of `symbols` in [start, end), by (ts, symbol)."""
        wanted = set(_symbols(symbols))
        lo = bisect_left(self._times, _aware(start, "start"))
        hi = bisect_left(self._times, _aware(end, "end"))
        return (bar for bar in self._bars[lo:hi] if bar.symbol in wanted)
