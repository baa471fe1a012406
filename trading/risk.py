"""Pre-trade risk: limits, the trading state and the equity-driven kill switch.

`RiskEngine.check` answers whether a new order may go out with a `RiskDecision` value and
a `RiskReason` code, never an exception (only malformed input raises `Invalid`);
`on_equity` returns `RiskEvent`s when the daily loss limit or the drawdown kill switch
halts trading. Used by the tenant's risk actor, backtests and the local agent.

`check` runs these steps in this fixed order and answers with the first failure:

1. trading state: HALTED refuses every new order (`halted`); REDUCING refuses any order
   that does not shrink the position's absolute size without flipping it (`reducing_only`)
2. `max_open_orders`: open orders + 1 > limit
3. `max_orders_per_minute`: orders accepted in the 60 s up to `now`, + 1 > limit
4. `price_band_bps`: the limit price lies farther from the last price than the band
   (only for orders with a limit price, and only when the last price is known)
5. `max_order_notional`: quantity x reference price > limit; the reference price is the
   limit price, else the stop price, else the last price. With no reference price,
   `no_price` when this limit, or the exposure limit of step 7, would need one
6. `max_position_per_symbol`: |position + signed quantity| > limit, if it grows |position|
7. `max_gross_exposure`: gross exposure + order notional > limit, if it grows |position|

Cancels are never checked: they stay allowed in every state, HALTED included.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from trading.errors import Invalid
from trading.orders import Order
from trading.values import bps, money, non_negative, price, to_decimal

WINDOW = timedelta(seconds=60)
SNAPSHOT_VERSION = 1
_HUNDREDTH = Decimal("0.01")


class TradingState(StrEnum):
    ACTIVE = "active"
    HALTED = "halted"  # no new orders; cancels allowed
    REDUCING = "reducing"  # only orders that shrink |position| without flipping it


class RiskReason(StrEnum):
    MAX_ORDER_NOTIONAL = "max_order_notional"
    MAX_POSITION = "max_position"
    MAX_GROSS_EXPOSURE = "max_gross_exposure"
    MAX_OPEN_ORDERS = "max_open_orders"
    MAX_ORDERS_PER_MINUTE = "max_orders_per_minute"
    PRICE_BAND = "price_band"
    HALTED = "halted"
    REDUCING_ONLY = "reducing_only"
    NO_PRICE = "no_price"
    DAILY_LOSS_LIMIT = "daily_loss_limit"
    MAX_DRAWDOWN = "max_drawdown"


_DECIMAL_LIMITS = ("max_order_notional", "max_position_per_symbol", "max_gross_exposure",
                   "price_band_bps", "daily_loss_limit", "max_drawdown_pct")
_INT_LIMITS = ("max_open_orders", "max_orders_per_minute")


@dataclass(frozen=True)
class RiskLimits:
    """A tenant's risk limits; None means no limit. Numbers are converted and validated."""

    max_order_notional: Decimal | None = None  # money per order
    max_position_per_symbol: Decimal | None = None  # absolute quantity
    max_gross_exposure: Decimal | None = None  # money, whole portfolio
    max_open_orders: int | None = None
    max_orders_per_minute: int | None = None
    price_band_bps: Decimal | None = None  # limit price vs last price
    daily_loss_limit: Decimal | None = None  # money lost since the UTC day's start: halts
    max_drawdown_pct: Decimal | None = None  # percent below the equity peak: kill switch

    def __post_init__(self) -> None:
        for name in _DECIMAL_LIMITS + _INT_LIMITS:
            if (value := getattr(self, name)) is not None:
                convert = _count if name in _INT_LIMITS else non_negative
                object.__setattr__(self, name, convert(value, field=name))
        for name in ("daily_loss_limit", "max_drawdown_pct"):
            if getattr(self, name) == 0:
                raise Invalid(f"{name} must be positive", field=name)
        if self.max_drawdown_pct is not None and self.max_drawdown_pct > 100:
            raise Invalid("max_drawdown_pct must be at most 100", field="max_drawdown_pct")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RiskLimits:
        """Build limits from a JSON-like mapping, refusing unknown keys."""
        if not isinstance(data, Mapping):
            raise Invalid("risk limits must be an object", field="limits")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise Invalid(f"unknown risk limit {key!r}; known: {', '.join(sorted(known))}",
                              field=str(key))
        return cls(**data)

    def to_dict(self) -> dict[str, str | int | None]:
        """Return the limits JSON-friendly: Decimals as strings, None kept."""
        return {f.name: _json(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class RiskDecision:
    """The answer to one pre-trade check: accepted, or rejected with a reason code."""

    accepted: bool
    reason: RiskReason | None
    message: str

    @classmethod
    def accept(cls) -> RiskDecision:
        """Return an acceptance."""
        return cls(True, None, "accepted")

    @classmethod
    def reject(cls, reason: RiskReason, message: str) -> RiskDecision:
        """Return a rejection with `reason` and a message for people."""
        return cls(False, RiskReason(reason), message)

    def to_dict(self) -> dict[str, Any]:
        """Return the decision JSON-friendly."""
        return {"accepted": self.accepted, "reason": _json(self.reason), "message": self.message}


@dataclass(frozen=True)
class RiskEvent:
    """A change the engine made: "halted", "kill_switch", "resumed" or "state_changed"."""

    kind: str
    reason: RiskReason | None
    message: str
    ts: datetime

    def to_dict(self) -> dict[str, Any]:
        """Return the event JSON-friendly."""
        return {"kind": self.kind, "reason": _json(self.reason), "message": self.message,
                "ts": self.ts.isoformat()}


class RiskEngine:
    """Check new orders against the limits and halt trading on equity losses.

    The daily loss limit halts trading until the next UTC day, when it resumes by
    itself. The drawdown kill switch halts trading until `set_state` resumes it; the
    caller then cancels open orders and stops the tenant's bots. Each fires once: a
    `set_state` out of HALTED re-arms them, measuring the day's loss and the peak afresh
    from the next equity update.
    """

    def __init__(self, limits: RiskLimits, state: TradingState = TradingState.ACTIVE) -> None:
        self._limits = _check_limits(limits)
        self._state = _trading_state(state, field="state")
        self._halt_cause: RiskReason | None = None  # None while HALTED: set by hand
        self._day: date | None = None  # the current UTC trading day
        self._day_start: Decimal | None = None  # equity at its start (or at the re-arm)
        self._peak: Decimal | None = None  # highest equity seen (since the re-arm)
        self._daily_loss_fired = self._kill_switch_fired = False
        self._recent: list[datetime] = []  # accepted order times, sorted, UTC

    @property
    def state(self) -> TradingState:
        """Return the current trading state."""
        return self._state

    @property
    def limits(self) -> RiskLimits:
        """Return the limits in force."""
        return self._limits

    def set_limits(self, limits: RiskLimits) -> None:
        """Replace the limits; the state, equity marks and order window are kept."""
        self._limits = _check_limits(limits)

    def set_state(self, state: TradingState, ts: datetime) -> RiskEvent:
        """Set the trading state by hand and return the "state_changed" event.

        A manual HALTED never resumes by itself; leaving HALTED re-arms the triggers.
        """
        new = _trading_state(state, field="state")
        ts = _utc(ts, field="ts")
        old, self._state, self._halt_cause = self._state, new, None
        if new is not TradingState.HALTED:
            if self._kill_switch_fired:
                self._kill_switch_fired, self._peak = False, None
            if self._daily_loss_fired:
                self._daily_loss_fired, self._day_start = False, None
        return RiskEvent("state_changed", None,
                         f"trading state changed from {old.value} to {new.value} by hand", ts)

    def check(self, order: Order, *, position: Decimal, gross_exposure: Decimal, open_orders: int,
              last_price: Decimal | None, now: datetime) -> RiskDecision:
        """Decide whether `order` may go out; on acceptance, count it in the minute window.

        `position` is the signed quantity held in the order's symbol, `gross_exposure` the
        portfolio's gross exposure in money and `open_orders` the tenant's open orders.
        """
        if not isinstance(order, Order):
            raise Invalid("order must be an Order", field="order")
        moment = _utc(now, field="now")
        decision = self._evaluate(
            order, to_decimal(position, field="position"),
            non_negative(gross_exposure, field="gross_exposure"),
            _count(open_orders, field="open_orders"),
            None if last_price is None else price(last_price, field="last_price"), moment)
        if decision.accepted:
            self._record(moment)
        return decision

    def _evaluate(self, order: Order, position: Decimal, gross: Decimal, open_orders: int,
                  last: Decimal | None, now: datetime) -> RiskDecision:
        limits, qty, reject = self._limits, order.quantity, RiskDecision.reject
        after = position + qty * order.side.sign
        grows = abs(after) > abs(position)
        what = f"{order.side.value} {_fmt(qty)} {order.symbol}"
        if self._state is TradingState.HALTED:
            return reject(RiskReason.HALTED, f"trading is halted: {what} refused")
        if self._state is TradingState.REDUCING and not _reduces(position, after):
            return reject(RiskReason.REDUCING_ONLY,
                          f"trading is reducing-only: {what} would take the position from "
                          f"{_fmt(position)} to {_fmt(after)}")
        if limits.max_open_orders is not None and open_orders + 1 > limits.max_open_orders:
            return _exceeds(RiskReason.MAX_OPEN_ORDERS, "open orders", open_orders + 1,
                            "max_open_orders", limits.max_open_orders)
        recent = self._count_recent(now) + 1
        if limits.max_orders_per_minute is not None and recent > limits.max_orders_per_minute:
            return _exceeds(RiskReason.MAX_ORDERS_PER_MINUTE, "orders in the last minute", recent,
                            "max_orders_per_minute", limits.max_orders_per_minute)
        band = limits.price_band_bps
        if band is not None and order.limit_price is not None and last is not None \
                and abs(order.limit_price - last) > bps(last, band):
            away = abs(order.limit_price - last) / last * 10_000
            return reject(RiskReason.PRICE_BAND,
                          f"limit price {_fmt(order.limit_price)} is {_fmt(away, _HUNDREDTH)} bps "
                          f"from last price {_fmt(last)}, outside price_band_bps {_fmt(band)}")
        ref = next((p for p in (order.limit_price, order.stop_price, last) if p is not None), None)
        if ref is None:
            needs = [name for name, value, applies in (
                ("max_order_notional", limits.max_order_notional, True),
                ("max_gross_exposure", limits.max_gross_exposure, grows)) if value is not None and applies]
            if needs:
                return reject(RiskReason.NO_PRICE, f"no price known for {order.type.value} order "
                                                   f"{what}; {' and '.join(needs)} needs one")
        notional = None if ref is None else qty * ref
        if limits.max_order_notional is not None and notional is not None \
                and notional > limits.max_order_notional:
            return _exceeds(RiskReason.MAX_ORDER_NOTIONAL, "order notional", notional,
                            "max_order_notional", limits.max_order_notional)
        if limits.max_position_per_symbol is not None and grows \
                and abs(after) > limits.max_position_per_symbol:
            return _exceeds(RiskReason.MAX_POSITION, f"{order.symbol} position", abs(after),
                            "max_position_per_symbol", limits.max_position_per_symbol)
        if limits.max_gross_exposure is not None and grows and notional is not None \
                and gross + notional > limits.max_gross_exposure:
            return _exceeds(RiskReason.MAX_GROSS_EXPOSURE, "gross exposure", gross + notional,
                            "max_gross_exposure", limits.max_gross_exposure)
        return RiskDecision.accept()

    def _count_recent(self, now: datetime) -> int:
        return bisect_right(self._recent, now) - bisect_right(self._recent, now - WINDOW)

    def _record(self, now: datetime) -> None:
        insort(self._recent, now)
        del self._recent[:bisect_right(self._recent, now - WINDOW)]

    def on_equity(self, equity: Decimal, now: datetime) -> list[RiskEvent]:
        """Take an equity update; return the events it caused (halted, kill_switch, resumed).

        The trading day is the UTC date of `now`; an update dated before the current day
        counts towards the current day.
        """
        equity, now = money(equity, field="equity"), _utc(now, field="now")
        events: list[RiskEvent] = []
        today = now.date()
        if self._day is None or today > self._day:
            self._day, self._day_start, self._daily_loss_fired = today, equity, False
            if self._state is TradingState.HALTED and self._halt_cause is RiskReason.DAILY_LOSS_LIMIT:
                self._state, self._halt_cause = TradingState.ACTIVE, None
                events.append(RiskEvent("resumed", RiskReason.DAILY_LOSS_LIMIT,
                                        f"new trading day {today.isoformat()}: trading resumes "
                                        f"after the daily loss halt", now))
        elif self._day_start is None:
            self._day_start = equity
        start = equity if self._day_start is None else self._day_start
        peak = self._peak = equity if self._peak is None else max(self._peak, equity)
        limit = self._limits.daily_loss_limit
        if limit is not None and not self._daily_loss_fired and start - equity >= limit:
            self._daily_loss_fired = True
            if self._state is not TradingState.HALTED:
                self._state, self._halt_cause = TradingState.HALTED, RiskReason.DAILY_LOSS_LIMIT
                events.append(RiskEvent("halted", RiskReason.DAILY_LOSS_LIMIT,
                                        f"daily loss {_fmt(start - equity)} reaches daily_loss_limit "
                                        f"{_fmt(limit)}: trading halted until the next UTC day", now))
        pct = self._limits.max_drawdown_pct
        if pct is not None and not self._kill_switch_fired and peak > 0:
            drawdown = (peak - equity) / peak * 100
            if drawdown >= pct:
                self._kill_switch_fired = True
                self._state, self._halt_cause = TradingState.HALTED, RiskReason.MAX_DRAWDOWN
                events.append(RiskEvent("kill_switch", RiskReason.MAX_DRAWDOWN,
                                        f"drawdown {_fmt(drawdown, _HUNDREDTH)}% from peak equity "
                                        f"{_fmt(peak)} reaches max_drawdown_pct {_fmt(pct)}: "
                                        f"kill switch fired", now))
        return events

    def snapshot(self) -> dict[str, Any]:
        """Return the engine's state JSON-friendly, for `restore` after a restart."""
        return {"version": SNAPSHOT_VERSION, "state": self._state.value,
                "halt_cause": _json(self._halt_cause),
                "day": None if self._day is None else self._day.isoformat(),
                "day_start_equity": _json(self._day_start), "peak_equity": _json(self._peak),
                "daily_loss_fired": self._daily_loss_fired, "kill_switch_fired": self._kill_switch_fired,
                "recent_orders": [t.isoformat() for t in self._recent]}

    @classmethod
    def restore(cls, limits: RiskLimits, snapshot: Mapping[str, Any]) -> RiskEngine:
        """Rebuild an engine from `snapshot` with `limits` (which may have changed since)."""
        if not isinstance(snapshot, Mapping):
            raise Invalid("snapshot must be an object", field="snapshot")
        snap = dict(snapshot)
        if snap.get("version") != SNAPSHOT_VERSION:
            raise Invalid(f"snapshot version must be {SNAPSHOT_VERSION}", field="snapshot.version")
        engine = cls(limits, _from_snap(snap, "state", TradingState, "a trading state", optional=False))
        engine._halt_cause = _from_snap(snap, "halt_cause", RiskReason, "a risk reason")
        engine._day = _from_snap(snap, "day", date.fromisoformat, "an ISO date")
        engine._day_start = _from_snap(snap, "day_start_equity", money, "a number")
        engine._peak = _from_snap(snap, "peak_equity", money, "a number")
        for key in ("daily_loss_fired", "kill_switch_fired"):
            setattr(engine, f"_{key}", _from_snap(snap, key, _bool, "true or false", optional=False))
        engine._recent = _from_snap(snap, "recent_orders", _timestamps,
                                    "a list of timezone-aware ISO timestamps", optional=False)
        return engine


def _exceeds(reason: RiskReason, what: str, value: Decimal | int, name: str,
             limit: Decimal | int) -> RiskDecision:
    """Reject with "<what> <value> exceeds <name> <limit>"."""
    return RiskDecision.reject(reason, f"{what} {_fmt(Decimal(value))} exceeds {name} "
                                       f"{_fmt(Decimal(limit))}")


def _reduces(position: Decimal, after: Decimal) -> bool:
    """Tell whether moving from `position` to `after` shrinks |position| without flipping."""
    return abs(after) < abs(position) and (after == 0 or (after > 0) == (position > 0))


def _count(value: Any, *, field: str) -> int:
    """Convert `value` to a whole number >= 0 or raise `Invalid` naming `field`."""
    number = to_decimal(value, field=field)  # refuses booleans, NaN and infinities
    if number != number.to_integral_value():
        raise Invalid(f"{field} must be a whole number", field=field)
    if number < 0:
        raise Invalid(f"{field} must not be negative", field=field)
    return int(number)


def _check_limits(limits: Any) -> RiskLimits:
    if not isinstance(limits, RiskLimits):
        raise Invalid("limits must be RiskLimits", field="limits")
    return limits


def _trading_state(value: Any, *, field: str) -> TradingState:
    try:
        return TradingState(value)
    except ValueError:
        raise Invalid(f"{field} must be one of {', '.join(s.value for s in TradingState)}",
                      field=field) from None


def _utc(value: Any, *, field: str) -> datetime:
    """Return `value` in UTC, refusing anything but a timezone-aware datetime."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise Invalid(f"{field} must be a timezone-aware datetime", field=field)
    return value.astimezone(UTC)


def _from_snap(snap: dict[str, Any], key: str, convert: Callable[[Any], Any], what: str, *,
               optional: bool = True) -> Any:
    """Return `snap[key]` converted, or raise `Invalid` naming ``snapshot.<key>``."""
    if key not in snap:
        raise Invalid(f"snapshot lacks {key}", field=f"snapshot.{key}")
    if snap[key] is None and optional:
        return None
    try:
        return convert(snap[key])
    except (Invalid, TypeError, ValueError):
        raise Invalid(f"snapshot {key} must be {what}", field=f"snapshot.{key}") from None


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(value)
    return value


def _timestamps(values: Any) -> list[datetime]:
    if not isinstance(values, list):
        raise TypeError(values)
    return sorted(_utc(datetime.fromisoformat(v), field="ts") for v in values)


def _json(value: Any) -> Any:
    """Return `value` JSON-friendly: Decimals as strings, enums as their values."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, StrEnum):
        return value.value
    return value


def _fmt(value: Decimal, step: Decimal | None = None) -> str:
    """Format `value` for messages: plain notation, no trailing zeros."""
    if step is not None:
        value = value.quantize(step)
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
