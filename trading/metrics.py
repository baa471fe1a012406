"""Performance metrics of a backtest, from its equity curve and its fills.

Conventions (each metric's own definition is on its `Metrics` field):

* The curve is the equity at each bar time; `capital` (the starting cash), when given,
  is the value before the first point, so the first bar's move counts as a return.
  Without it the first point is the start.
* Period returns are simple: ``r_i = v_i / v_(i-1) - 1``.
* Annualisation: the bar interval is the median spacing of the curve's timestamps and a
  year is 365.25 days of calendar time (markets that trade around the clock), so
  ``periods_per_year = 365.25 days / interval``. Pass `periods_per_year` to override
  (252 for daily bars of an exchange that trades on weekdays only).
* The risk-free rate is zero. Ratios whose denominator is zero are None.
* Fractions (returns, drawdown, win rate, exposure) are plain numbers: 0.05 is 5 %.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np

from trading.errors import Invalid
from trading.orders import Fill, Side
from trading.values import ZERO

YEAR = timedelta(days=365.25)


@dataclass(frozen=True)
class RoundTrip:
    """A quantity opened by one fill and closed by a later one, matched first in, first out.

    `pnl` is net of fees: the entry and exit fills' fees are shared out in proportion to
    the quantity matched.
    """

    symbol: str
    direction: str  # "long" or "short"
    quantity: Decimal
    entry_ts: datetime
    entry_price: Decimal
    exit_ts: datetime
    exit_price: Decimal
    fees: Decimal
    pnl: Decimal


@dataclass(frozen=True)
class Metrics:
    """The metrics of one backtest (see the module docstring for the conventions)."""

    total_return: float  # v_end / v_start - 1
    cagr: float  # (v_end / v_start) ** (1 / years) - 1, years = returns / periods_per_year; -1 if wiped out
    sharpe: float | None  # mean(r) / std(r, ddof=1) * sqrt(periods_per_year); None if std is 0 or < 2 returns
    sortino: float | None  # mean(r) / sqrt(mean(min(r, 0) ** 2)) * sqrt(periods_per_year); None if no loss
    calmar: float | None  # cagr / max_drawdown; None without a drawdown
    max_drawdown: float  # max over t of 1 - v_t / max(v_0..v_t), v_0 the start
    max_drawdown_bars: int  # the longest run of consecutive points below the running peak
    max_drawdown_duration: timedelta  # max_drawdown_bars * interval
    round_trips: int  # FIFO-matched round trips (see `round_trips`)
    win_rate: float | None  # share of round trips with pnl > 0; None without round trips
    profit_factor: float | None  # sum of winning pnl / |sum of losing pnl|; None without a loss
    exposure: float  # share of curve points at which some position is open (fills up to that time)
    turnover: float  # traded notional (sum of |quantity * price|) / mean equity of the curve
    periods_per_year: float  # the annualisation factor used
    interval: timedelta  # the bar interval (median spacing of the curve)

    def as_dict(self) -> dict[str, Any]:
        """Return the metrics as a plain dict (durations as timedeltas)."""
        return asdict(self)


def round_trips(fills: Iterable[Fill]) -> list[RoundTrip]:
    """Match `fills` into round trips, per symbol, first in first out.

    A fill against the open direction closes the oldest open lots first (one round trip
    per lot or part of a lot it closes); what is left of it opens a lot the other way.
    """
    lots: dict[str, deque[list[Any]]] = {}  # [signed quantity left, price, fee per unit, ts]
    trips: list[RoundTrip] = []
    for fill in fills:
        queue = lots.setdefault(fill.symbol, deque())
        sign = fill.side.sign
        left = fill.quantity
        fee_per_unit = fill.fee / fill.quantity
        while left > 0 and queue and (queue[0][0] > 0) != (sign > 0):
            lot = queue[0]
            matched = min(left, abs(lot[0]))
            long = lot[0] > 0
            gross = (fill.price - lot[1]) * matched * (1 if long else -1)
            fees = (lot[2] + fee_per_unit) * matched
            trips.append(RoundTrip(fill.symbol, "long" if long else "short", matched, lot[3], lot[1],
                                   fill.ts, fill.price, fees, gross - fees))
            lot[0] -= matched * (1 if long else -1)
            left -= matched
            if lot[0] == 0:
                queue.popleft()
        if left > 0:
            queue.append([left * sign, fill.price, fee_per_unit, fill.ts])
    return trips


def periods_per_year_of(times: Sequence[datetime]) -> tuple[float, timedelta]:
    """Return (periods per year, interval) from the median spacing of `times` (sorted)."""
    if len(times) < 2:
        raise Invalid("an equity curve needs two points to infer its interval", field="equity_curve")
    seconds = np.diff(np.array([t.timestamp() for t in times]))
    interval = timedelta(seconds=float(np.median(seconds)))
    if interval <= timedelta(0):
        raise Invalid("equity curve times must increase", field="equity_curve")
    return YEAR / interval, interval


def compute_metrics(equity_curve: Sequence[tuple[datetime, Any]], fills: Sequence[Fill], *,
                    capital: Any = None, periods_per_year: float | None = None) -> Metrics:
    """Compute `Metrics` from ``(ts, equity)`` points (oldest first) and the fills behind them."""
    if not equity_curve:
        raise Invalid("the equity curve is empty", field="equity_curve")
    times = [t for t, _ in equity_curve]
    values = np.array([float(v) for _, v in equity_curve])
    if capital is not None:
        values = np.concatenate([[float(capital)], values])
    if len(values) < 2:
        raise Invalid("an equity curve needs two values", field="equity_curve")
    if values[0] <= 0:
        raise Invalid("the starting equity must be positive", field="capital")
    if periods_per_year is None:
        ppy, interval = periods_per_year_of(times)
    else:
        if not periods_per_year > 0:
            raise Invalid("periods_per_year must be positive", field="periods_per_year")
        ppy, interval = float(periods_per_year), YEAR / periods_per_year
    returns = values[1:] / values[:-1] - 1.0
    total = values[-1] / values[0] - 1.0
    years = len(returns) / ppy
    cagr = -1.0 if values[-1] <= 0 else (values[-1] / values[0]) ** (1.0 / years) - 1.0
    sharpe = None
    if len(returns) >= 2:
        std = float(np.std(returns, ddof=1))
        sharpe = float(np.mean(returns)) / std * math.sqrt(ppy) if std > 0 else None
    downside = math.sqrt(float(np.mean(np.minimum(returns, 0.0) ** 2)))
    sortino = float(np.mean(returns)) / downside * math.sqrt(ppy) if downside > 0 else None
    peaks = np.maximum.accumulate(values)
    depth = float(np.max(1.0 - values / peaks))
    under = values < peaks
    longest = run = 0
    for flag in under.tolist():
        run = run + 1 if flag else 0
        longest = max(longest, run)
    trips = round_trips(fills)
    pnl = [float(t.pnl) for t in trips]
    wins, losses = sum(p for p in pnl if p > 0), sum(p for p in pnl if p < 0)
    return Metrics(
        total_return=float(total), cagr=float(cagr), sharpe=sharpe, sortino=sortino,
        calmar=float(cagr) / depth if depth > 0 else None, max_drawdown=depth,
        max_drawdown_bars=longest, max_drawdown_duration=interval * longest, round_trips=len(trips),
        win_rate=sum(1 for p in pnl if p > 0) / len(pnl) if pnl else None,
        profit_factor=wins / -losses if losses < 0 else None,
        exposure=_exposure(times, fills),
        turnover=float(sum((f.quantity * f.price for f in fills), ZERO)) / float(np.mean(values)),
        periods_per_year=float(ppy), interval=interval)


def _exposure(times: Sequence[datetime], fills: Sequence[Fill]) -> float:
    """Share of `times` at which some position is open, counting the fills up to each time."""
    held: dict[str, Decimal] = {}
    open_symbols = 0
    ordered = sorted(fills, key=lambda f: f.ts)
    i = exposed = 0
    for ts in times:
        while i < len(ordered) and ordered[i].ts <= ts:
            fill = ordered[i]
            before = held.get(fill.symbol, ZERO)
            after = before + fill.quantity * (1 if fill.side is Side.BUY else -1)
            held[fill.symbol] = after
            open_symbols += (after != 0) - (before != 0)
            i += 1
        exposed += open_symbols > 0
    return exposed / len(times)
