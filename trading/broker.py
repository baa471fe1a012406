"""The `Broker` port and `PaperBroker`, which fills orders against OHLCV bars.

The paper broker keeps its own working copy of every order it is given and never touches
the caller's object: `on_bar` and `cancel` return `Fill`s and `Expiry`s for the caller to
persist and then apply to its own orders. A caller that owns both sides and keeps no
events (the backtester) may instead hand an order over with ``submit(order, ts,
adopt=True)``: the broker then works on that object itself, which is already up to date
with the fills and expiries returned for it.

Execution rules, per bar, for each open order of the bar's symbol in submission order:

* No look-ahead: an order submitted at ``t`` is first eligible on the first bar of its
  symbol whose ``ts`` is strictly after ``t``, plus ``latency_bars`` more bars.
* MARKET fills at the open. LIMIT buys fill when ``low <= limit`` at ``min(open, limit)``,
  sells when ``high >= limit`` at ``max(open, limit)``. STOP buys trigger when
  ``high >= stop`` and fill at ``max(open, stop)`` (sells: ``low <= stop``, at
  ``min(open, stop)``); a triggered stop left partly filled acts as a market order. A
  STOP_LIMIT stays triggered once triggered and is a limit order from that bar on; on the
  trigger bar itself its reference price is the trigger price instead of the open, so
  it may fill on the same bar when the limit is reachable.
* Slippage moves market and stop fills against the trader by ``slippage_bps`` and rounds
  to the tick (up for buys, down for sells). Limit fills get no slippage and are never
  worse than the limit. The fee is ``fee_bps`` of the notional, rounded half-even to
  8 decimal places.
* With ``max_volume_share`` set, the orders of a symbol together fill at most
  ``floor_to_lot(volume * max_volume_share)`` on one bar (first come, first served); the
  rest waits for later bars. IOC orders cancel whatever did not fill on their first
  eligible bar (reason ``ioc_unfilled``). A DAY order still open when a bar of a later UTC
  date arrives expires (reason ``end_of_day``) before that bar is processed.
* Fill ids are ``f"{client_order_id}:{n}"`` with ``n`` counting that order's fills from 1,
  so a rebuilt broker fed the same bars produces the same ids.

Orders that arrive after their next bar. A backtester hands an order over before the next
bar exists; a live engine may get the next bar first (the order is still on its way from
the strategy through risk). With ``recent_bars=n`` the broker keeps each symbol's last
``n`` bars, with the volume each has left under ``max_volume_share``, and
``catch_up(client_order_id)`` works a newly submitted order on those of them it is
eligible for, in order, by the rules above, so it fills where a backtest would have
filled it, at the first bar after its submission, not at the next one to arrive.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from typing import Protocol

from trading.errors import Invalid
from trading.instruments import Bar, Instrument
from trading.orders import (
    LIMIT_TYPES,
    STOP_TYPES,
    Fill,
    Order,
    OrderStatus,
    OrderType,
    Side,
    TimeInForce,
)
from trading.values import ZERO, Price, Quantity, bps, non_negative, round_to_step, to_decimal

FEE_QUANTUM = Decimal("0.00000001")
_ENDINGS = (OrderStatus.CANCELED, OrderStatus.EXPIRED)
# The members read per order, as globals (see `trading.orders.LIMIT_TYPES` on why).
_ACCEPTED, _FILLED = OrderStatus.ACCEPTED, OrderStatus.FILLED
_CANCELED, _EXPIRED = OrderStatus.CANCELED, OrderStatus.EXPIRED
_MARKET, _STOP = OrderType.MARKET, OrderType.STOP
_DAY, _IOC = TimeInForce.DAY, TimeInForce.IOC
_BUY = Side.BUY


@dataclass(frozen=True)
class Expiry:
    """An order leaving the market without filling the rest: canceled or expired."""

    client_order_id: str
    status: OrderStatus
    reason: str
    ts: datetime

    def __post_init__(self) -> None:
        if self.status not in _ENDINGS:
            raise Invalid("an expiry's status must be canceled or expired", field="status")


class Broker(Protocol):
    """Where orders go to be executed."""

    def submit(self, order: Order, ts: datetime) -> None:
        """Take an ACCEPTED order submitted at `ts`."""
        ...

    def cancel(self, client_order_id: str, ts: datetime) -> Expiry | None:
        """Cancel an open order; return None if it is unknown or already done."""
        ...

    def on_bar(self, bar: Bar) -> list[Fill | Expiry]:
        """Execute open orders against `bar`; return what happened, in order."""
        ...

    def open_orders(self) -> list[str]:
        """Return the client order ids still working, in submission order."""
        ...


@dataclass
class _Working:
    order: Order  # the broker's own copy (or the caller's order, adopted)
    after: datetime  # eligible only on bars strictly after this
    wait: int  # eligible bars still to skip (latency)
    day: date  # UTC date of submission, for DAY orders
    fills: int  # fills so far; the next fill id ends in fills + 1
    # A stop or stop-limit whose stop price was reached: kept here, not on the order, so
    # that an adopted order changes only as the fills and expiries returned for it say.
    triggered: bool


@dataclass(slots=True)
class _Kept:
    bar: Bar
    cap: Quantity | None  # the volume the bar has left for orders (None: no cap)


def _utc(ts: datetime, field: str) -> datetime:
    if not isinstance(ts, datetime) or ts.tzinfo is None:
        raise Invalid(f"{field} must be a timezone-aware datetime", field=field)
    return ts.astimezone(UTC)


def _required(value: Price | None) -> Price:
    if value is None:  # submit checked this already
        raise Invalid("the order lacks a price its type needs", field="type")
    return value


class PaperBroker:
    """A simulated broker filling orders against bars (see the module docstring)."""

    def __init__(self, instruments: Mapping[str, Instrument], *, fee_bps: Decimal = ZERO,
                 slippage_bps: Decimal = ZERO, latency_bars: int = 0,
                 max_volume_share: Decimal | None = None, recent_bars: int = 0) -> None:
        """Validate the settings: non-negative costs, latency and bars kept, a share in (0, 1]."""
        self._instruments = dict(instruments)
        self.fee_bps = non_negative(fee_bps, field="fee_bps")
        self.slippage_bps = non_negative(slippage_bps, field="slippage_bps")
        if isinstance(latency_bars, bool) or not isinstance(latency_bars, int) or latency_bars < 0:
            raise Invalid("latency_bars must be a non-negative integer", field="latency_bars")
        self.latency_bars = latency_bars
        self.max_volume_share: Decimal | None = None
        if max_volume_share is not None:
            share = to_decimal(max_volume_share, field="max_volume_share")
            if not ZERO < share <= 1:
                raise Invalid("max_volume_share must be in (0, 1]", field="max_volume_share")
            self.max_volume_share = share
        if isinstance(recent_bars, bool) or not isinstance(recent_bars, int) or recent_bars < 0:
            raise Invalid("recent_bars must be a non-negative integer", field="recent_bars")
        self.recent_bars = recent_bars
        self._working: dict[str, _Working] = {}
        self._recent: dict[str, deque[_Kept]] = {}  # per symbol, the last bars worked

    def knows(self, symbol: str) -> bool:
        """Whether orders for `symbol` can be submitted (its instrument is known)."""
        return symbol in self._instruments

    def add_instruments(self, instruments: Mapping[str, Instrument]) -> None:
        """Learn more instruments (or their new tick and lot sizes, for orders from now on)."""
        self._instruments.update(instruments)

    # -- the port ---------------------------------------------------------------------------

    def submit(self, order: Order, ts: datetime, *, adopt: bool = False) -> None:
        """Take a copy of an ACCEPTED order submitted at `ts`; refuse anything else.

        With `adopt`, take `order` itself instead of a copy: the fills and expiries this
        broker returns for it are then applied to it already, and the caller must not
        apply them again.
        """
        if order.status is not _ACCEPTED:
            raise Invalid(f"only accepted orders can be submitted, not {order.status.value}",
                          field="status")
        self._check(order)
        at = _utc(ts, "ts")
        self._working[order.client_order_id] = _Working(
            order if adopt else order.copy(), at, self.latency_bars, at.date(), 0, order.triggered)

    def cancel(self, client_order_id: str, ts: datetime, *, reason: str = "canceled") -> Expiry | None:
        """Cancel an open order, giving `reason`; return None if it is unknown or already done."""
        working = self._working.get(client_order_id)
        if working is None:
            return None
        return self._end(working, _CANCELED, reason, _utc(ts, "ts"))

    def on_bar(self, bar: Bar) -> list[Fill | Expiry]:
        """Execute the open orders of the bar's symbol; return fills and expiries in order."""
        events: list[Fill | Expiry] = []
        instrument = self._instruments.get(bar.symbol)
        if instrument is None:
            return events
        cap: Quantity | None = None
        if self.max_volume_share is not None:
            cap = round_to_step(bar.volume * self.max_volume_share, instrument.lot_size, down=True)
        for working in [w for w in self._working.values() if w.order.symbol == bar.symbol]:
            cap = self._work(working, bar, instrument, cap, events)
        if self.recent_bars:
            recent = self._recent.get(bar.symbol)
            if recent is None:
                recent = self._recent[bar.symbol] = deque(maxlen=self.recent_bars)
            if not recent or bar.ts > recent[-1].bar.ts:  # a replayed bar is not kept twice
                recent.append(_Kept(bar, cap))
        return events

    def catch_up(self, client_order_id: str) -> list[Fill | Expiry]:
        """Work a newly submitted order on the kept bars it is eligible for (oldest first).

        Returns its fills and expiries; nothing when no bar after its submission is kept
        (``recent_bars=0``, or the next bar has not come yet).
        """
        events: list[Fill | Expiry] = []
        working = self._working.get(client_order_id)
        if working is None:
            return events
        instrument = self._instruments[working.order.symbol]
        for kept in self._recent.get(working.order.symbol, ()):
            if kept.bar.ts <= working.after:
                continue
            if self._working.get(client_order_id) is not working:
                break  # filled, expired or canceled on an earlier kept bar
            kept.cap = self._work(working, kept.bar, instrument, kept.cap, events)
        return events

    def open_orders(self) -> list[str]:
        """Return the client order ids still working, in submission order."""
        return list(self._working)

    # -- beyond the port --------------------------------------------------------------------

    def order(self, client_order_id: str) -> Order | None:
        """Return a copy of the broker's working state of an open order (None if not open)."""
        working = self._working.get(client_order_id)
        if working is None:
            return None
        state = working.order.copy()
        state.triggered = working.triggered
        return state

    def restore(self, orders: Iterable[Order], *, fills_so_far: Mapping[str, int] | None = None,
                as_of: datetime | None = None) -> None:
        """Re-add the open orders among `orders` after a restart; skip the others.

        Each keeps its filled quantity (so only the remainder works) and its `triggered`
        flag; fill ids continue after ``fills_so_far[client_order_id]`` (default 0). The
        orders were already in the market, so no latency applies: they are eligible on
        bars strictly after `as_of` (default: each order's `created_at`), and a DAY order
        belongs to the UTC date of its `created_at`.
        """
        counts = dict(fills_so_far or {})
        after = None if as_of is None else _utc(as_of, "as_of")
        for order in orders:
            if not order.is_open:
                continue
            self._check(order)
            done = counts.get(order.client_order_id, 0)
            if isinstance(done, bool) or not isinstance(done, int) or done < 0:
                raise Invalid("fills_so_far must hold non-negative integers", field="fills_so_far")
            created = _utc(order.created_at, "created_at")
            self._working[order.client_order_id] = _Working(
                order.copy(), after=after or created, wait=0, day=created.date(), fills=done,
                triggered=order.triggered)

    # -- internals --------------------------------------------------------------------------

    def _check(self, order: Order) -> None:
        if order.symbol not in self._instruments:
            raise Invalid(f"unknown symbol {order.symbol}", field="symbol")
        if order.client_order_id in self._working:
            raise Invalid(f"order {order.client_order_id} is already working",
                          field="client_order_id")
        if order.limit_price is None and order.type in LIMIT_TYPES:
            raise Invalid(f"a {order.type.value} order needs limit_price", field="limit_price")
        if order.stop_price is None and order.type in STOP_TYPES:
            raise Invalid(f"a {order.type.value} order needs stop_price", field="stop_price")

    def _work(self, working: _Working, bar: Bar, instrument: Instrument, cap: Quantity | None,
              events: list[Fill | Expiry]) -> Quantity | None:
        """Apply one bar to one open order of its symbol; return the bar's volume cap left."""
        order = working.order
        ts = bar.ts
        if order.time_in_force is _DAY and ts.date() > working.day:
            events.append(self._end(working, _EXPIRED, "end_of_day", ts))
            return cap
        if ts <= working.after:
            return cap
        if working.wait > 0:
            working.wait -= 1
            return cap
        fill = self._execute(working, bar, instrument, cap)
        if fill is not None:
            events.append(fill)
            if cap is not None:
                cap -= fill.quantity
        if order.status is _FILLED:
            del self._working[order.client_order_id]
        elif order.time_in_force is _IOC:
            events.append(self._end(working, _CANCELED, "ioc_unfilled", ts))
        return cap

    def _end(self, working: _Working, status: OrderStatus, reason: str, ts: datetime) -> Expiry:
        order = working.order
        order._move(status, reason)  # no event: the caller gets the Expiry
        del self._working[order.client_order_id]
        return Expiry(order.client_order_id, status, reason, ts)

    def _execute(self, working: _Working, bar: Bar, instrument: Instrument,
                 cap: Quantity | None) -> Fill | None:
        order = working.order
        px = self._price(working, bar, instrument)
        if px is None:
            return None
        remaining = order.remaining
        qty = remaining if cap is None else min(remaining, cap)
        if qty <= 0:
            return None
        fee = bps(qty * px, self.fee_bps).quantize(FEE_QUANTUM, rounding=ROUND_HALF_EVEN)
        working.fills += 1
        cid = order.client_order_id
        # qty is positive (checked above), px a positive price (a bar's, a limit's or a
        # tick multiple of at least one tick), fee a non-negative quantized Decimal.
        fill = Fill._trusted(f"{cid}:{working.fills}", cid, order.symbol, order.side, qty, px, fee,
                             bar.ts)
        order._book(fill)
        return fill

    def _price(self, working: _Working, bar: Bar, instrument: Instrument) -> Price | None:
        """Return this bar's fill price for the working order, or None; mark stops triggered."""
        order = working.order
        buy = order.side is _BUY
        kind = order.type
        if kind is _MARKET:
            return self._slip(bar.open, buy, instrument)
        reference = bar.open
        if kind in STOP_TYPES and not working.triggered:
            stop = _required(order.stop_price)
            if not (bar.high >= stop if buy else bar.low <= stop):
                return None
            working.triggered = True
            reference = max(bar.open, stop) if buy else min(bar.open, stop)
        if kind is _STOP:
            return self._slip(reference, buy, instrument)
        limit = _required(order.limit_price)
        if buy:
            return min(reference, limit) if bar.low <= limit else None
        return max(reference, limit) if bar.high >= limit else None

    def _slip(self, px: Price, buy: bool, instrument: Instrument) -> Price:
        """Move `px` against the trader by the slippage, then to the tick (up for a buy), >= 1 tick."""
        tick = instrument.tick_size
        if buy:
            units = ((px + bps(px, self.slippage_bps)) / tick).to_integral_value(rounding=ROUND_CEILING)
        else:
            units = ((px - bps(px, self.slippage_bps)) / tick).to_integral_value(rounding=ROUND_FLOOR)
        return max(tick, units * tick)
