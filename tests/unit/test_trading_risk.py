"""The pre-trade risk engine: each limit, the trading states, the equity triggers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from trading.errors import Invalid
from trading.orders import Order
from trading.risk import RiskDecision, RiskEngine, RiskEvent, RiskLimits, RiskReason, TradingState

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
D = Decimal


def order(side: str = "buy", quantity: str = "1", *, type: str = "limit",
          limit_price: str | None = "100", stop_price: str | None = None) -> Order:
    return Order.new(client_order_id="o-1", symbol="BTC-USD", side=side, type=type,
                     quantity=quantity, limit_price=limit_price, stop_price=stop_price)


def check(engine: RiskEngine, o: Order, *, position: str = "0", gross: str = "0", open_orders: int = 0,
          last: str | None = "100", now: datetime = T0) -> RiskDecision:
    return engine.check(o, position=D(position), gross_exposure=D(gross), open_orders=open_orders,
                        last_price=None if last is None else D(last), now=now)


def engine(**limits: Any) -> RiskEngine:
    return RiskEngine(RiskLimits.from_dict(limits))


def assert_rejected(decision: RiskDecision, reason: RiskReason, *words: str) -> None:
    assert not decision.accepted
    assert decision.reason is reason
    for word in words:
        assert word in decision.message, decision.message


# ---- each limit: just under (or at) is accepted, just over is rejected ----------------

def test_max_order_notional() -> None:
    e = engine(max_order_notional="10000")
    assert check(e, order(quantity="100", limit_price="100")).accepted  # exactly 10000
    d = check(e, order(quantity="120", limit_price="100"))
    assert_rejected(d, RiskReason.MAX_ORDER_NOTIONAL, "12000", "max_order_notional", "10000")
    assert d.message == "order notional 12000 exceeds max_order_notional 10000"


def test_reference_price_is_limit_then_stop_then_last() -> None:
    e = engine(max_order_notional="1000")
    # limit price 10 used, not last 1000
    assert check(e, order(quantity="100", limit_price="10"), last="1000").accepted
    stop = order(quantity="10", type="stop", limit_price=None, stop_price="101")
    assert_rejected(check(e, stop, last="1"), RiskReason.MAX_ORDER_NOTIONAL, "1010")
    market = order(quantity="10", type="market", limit_price=None)
    assert check(e, market, last="100").accepted
    assert_rejected(check(e, market, last="100.01"), RiskReason.MAX_ORDER_NOTIONAL, "1000.1")


def test_market_order_without_last_price_is_no_price_when_a_notional_limit_needs_one() -> None:
    market = order(type="market", limit_price=None)
    assert_rejected(check(engine(max_order_notional="1000"), market, last=None),
                    RiskReason.NO_PRICE, "max_order_notional")
    assert_rejected(check(engine(max_gross_exposure="1000"), market, last=None),
                    RiskReason.NO_PRICE, "max_gross_exposure")
    # a reducing order needs no price for the exposure limit; no limit needs none at all
    assert check(engine(max_gross_exposure="1000"), order("sell", type="market", limit_price=None),
                 position="5", last=None).accepted
    assert check(engine(max_position_per_symbol="5"), market, last=None).accepted


def test_max_position_per_symbol() -> None:
    e = engine(max_position_per_symbol="5")
    assert check(e, order(quantity="1"), position="4").accepted
    assert_rejected(check(e, order(quantity="1.5"), position="4"), RiskReason.MAX_POSITION,
                    "5.5", "max_position_per_symbol 5")
    # short side counts by absolute size
    assert_rejected(check(e, order("sell", "2"), position="-4"), RiskReason.MAX_POSITION, "6")
    # an order that shrinks an over-limit position is allowed
    assert check(e, order("sell", "1"), position="8").accepted
    # a flip that ends larger than the limit is refused
    assert_rejected(check(e, order("sell", "12"), position="3"), RiskReason.MAX_POSITION, "9")


def test_max_gross_exposure() -> None:
    e = engine(max_gross_exposure="1000")
    assert check(e, order(quantity="1", limit_price="100"), gross="900").accepted
    assert_rejected(check(e, order(quantity="1", limit_price="100.01"), gross="900"),
                    RiskReason.MAX_GROSS_EXPOSURE, "1000.01", "max_gross_exposure 1000")
    # reducing orders are not held to the exposure limit
    assert check(e, order("sell", "1"), position="2", gross="5000").accepted


def test_max_open_orders() -> None:
    e = engine(max_open_orders=3)
    assert check(e, order(), open_orders=2).accepted
    assert_rejected(check(e, order(), open_orders=3), RiskReason.MAX_OPEN_ORDERS,
                    "4", "max_open_orders 3")


def test_price_band() -> None:
    e = engine(price_band_bps="100")  # 1%
    assert check(e, order(limit_price="101"), last="100").accepted
    assert check(e, order(limit_price="99"), last="100").accepted
    assert_rejected(check(e, order(limit_price="101.01"), last="100"), RiskReason.PRICE_BAND,
                    "101.01", "101 bps", "price_band_bps 100")
    assert_rejected(check(e, order(limit_price="98.99"), last="100"), RiskReason.PRICE_BAND)
    # no band check without a last price, nor for orders without a limit price
    assert check(e, order(limit_price="500"), last=None).accepted
    stop = order(type="stop", limit_price=None, stop_price="500")
    assert check(e, stop, last="100").accepted


def test_orders_per_minute_window_slides() -> None:
    e = engine(max_orders_per_minute=2)
    assert check(e, order(), now=T0).accepted
    assert check(e, order(), now=T0 + timedelta(seconds=30)).accepted
    assert_rejected(check(e, order(), now=T0 + timedelta(seconds=59)),
                    RiskReason.MAX_ORDERS_PER_MINUTE, "3", "max_orders_per_minute 2")
    # the first order leaves the window after 60 s: one slot frees up
    assert check(e, order(), now=T0 + timedelta(seconds=60)).accepted
    assert_rejected(check(e, order(), now=T0 + timedelta(seconds=61)),
                    RiskReason.MAX_ORDERS_PER_MINUTE)
    assert check(e, order(), now=T0 + timedelta(seconds=91)).accepted


def test_rejected_orders_do_not_count_towards_the_minute_window() -> None:
    e = engine(max_orders_per_minute=1, max_order_notional="100")
    for _ in range(3):
        assert not check(e, order(quantity="2")).accepted
    assert check(e, order()).accepted


def test_checks_run_in_the_documented_order() -> None:
    e = engine(max_open_orders=0, max_order_notional="1", max_position_per_symbol="0",
               price_band_bps="1", max_gross_exposure="0")
    assert check(e, order(limit_price="500")).reason is RiskReason.MAX_OPEN_ORDERS
    e.set_limits(RiskLimits.from_dict({**e.limits.to_dict(), "max_open_orders": None}))
    assert check(e, order(limit_price="500")).reason is RiskReason.PRICE_BAND
    assert check(e, order()).reason is RiskReason.MAX_ORDER_NOTIONAL
    e.set_state(TradingState.HALTED, T0)
    assert check(e, order()).reason is RiskReason.HALTED


# ---- trading states ---------------------------------------------------------------------

def test_halted_refuses_every_order() -> None:
    e = RiskEngine(RiskLimits(), TradingState.HALTED)
    assert e.state is TradingState.HALTED
    for side, position in (("buy", "0"), ("sell", "5"), ("buy", "-5")):
        assert_rejected(check(e, order(side), position=position), RiskReason.HALTED, "halted")


def test_reducing_allows_reducing_orders_and_refuses_flips_and_growth() -> None:
    e = RiskEngine(RiskLimits(), TradingState.REDUCING)
    assert check(e, order("sell", "2"), position="5").accepted
    assert check(e, order("sell", "5"), position="5").accepted  # to flat
    assert check(e, order("buy", "3"), position="-5").accepted
    assert_rejected(check(e, order("sell", "6"), position="5"), RiskReason.REDUCING_ONLY,
                    "from 5 to -1")
    assert_rejected(check(e, order("buy", "1"), position="5"), RiskReason.REDUCING_ONLY)
    assert_rejected(check(e, order("sell", "1"), position="0"), RiskReason.REDUCING_ONLY)


def test_set_state_returns_an_event() -> None:
    e = engine()
    event = e.set_state(TradingState.REDUCING, T0)
    assert event == RiskEvent("state_changed", None,
                              "trading state changed from active to reducing by hand", T0)
    assert e.state is TradingState.REDUCING
    with pytest.raises(Invalid) as err:
        e.set_state("paused", T0)  # type: ignore[arg-type]
    assert err.value.field == "state"


# ---- equity triggers --------------------------------------------------------------------

def test_daily_loss_halts_once_then_resumes_next_day() -> None:
    e = engine(daily_loss_limit="1000")
    assert e.on_equity(D("10000"), T0) == []
    assert e.on_equity(D("9000.01"), T0 + timedelta(hours=1)) == []  # loss 999.99
    events = e.on_equity(D("9000"), T0 + timedelta(hours=2))
    assert [(ev.kind, ev.reason) for ev in events] == [("halted", RiskReason.DAILY_LOSS_LIMIT)]
    assert "daily loss 1000" in events[0].message
    assert e.state is TradingState.HALTED
    assert e.on_equity(D("8000"), T0 + timedelta(hours=3)) == []  # only once
    assert check(e, order()).reason is RiskReason.HALTED
    next_day = datetime(2024, 3, 2, 0, 0, 1, tzinfo=UTC)
    events = e.on_equity(D("8000"), next_day)
    assert [(ev.kind, ev.reason) for ev in events] == [("resumed", RiskReason.DAILY_LOSS_LIMIT)]
    assert e.state is TradingState.ACTIVE
    # the new day measures from its own start
    assert e.on_equity(D("7000.01"), next_day + timedelta(hours=1)) == []
    assert e.on_equity(D("7000"), next_day + timedelta(hours=2))[0].kind == "halted"


def test_trading_day_is_the_utc_date() -> None:
    e = engine(daily_loss_limit="100")
    plus_two = timezone(timedelta(hours=2))
    e.on_equity(D("1000"), datetime(2024, 3, 1, 23, 0, tzinfo=UTC))
    # 01:30 at UTC+2 is still 23:30 UTC on the same day
    assert e.on_equity(D("900"), datetime(2024, 3, 2, 1, 30, tzinfo=plus_two))[0].kind == "halted"


def test_drawdown_fires_the_kill_switch_once_and_stays_halted_next_day() -> None:
    e = engine(max_drawdown_pct="10")
    e.on_equity(D("1000"), T0)
    e.on_equity(D("2000"), T0 + timedelta(minutes=1))  # new peak
    assert e.on_equity(D("1800.01"), T0 + timedelta(minutes=2)) == []
    events = e.on_equity(D("1800"), T0 + timedelta(minutes=3))
    assert [(ev.kind, ev.reason) for ev in events] == [("kill_switch", RiskReason.MAX_DRAWDOWN)]
    assert "peak equity 2000" in events[0].message
    assert e.state is TradingState.HALTED
    assert e.on_equity(D("1500"), T0 + timedelta(minutes=4)) == []
    assert e.on_equity(D("1500"), T0 + timedelta(days=1)) == []
    assert e.state is TradingState.HALTED
    # only an explicit set_state resumes, and re-arms the kill switch from a fresh peak
    assert e.set_state(TradingState.ACTIVE, T0 + timedelta(days=1)).kind == "state_changed"
    assert e.on_equity(D("1500"), T0 + timedelta(days=1, minutes=1)) == []
    assert e.on_equity(D("1350"), T0 + timedelta(days=1, minutes=2))[0].kind == "kill_switch"


def test_kill_switch_after_a_daily_loss_halt_does_not_resume_next_day() -> None:
    e = engine(daily_loss_limit="100", max_drawdown_pct="50")
    e.on_equity(D("1000"), T0)
    assert [ev.kind for ev in e.on_equity(D("400"), T0 + timedelta(hours=1))] == \
        ["halted", "kill_switch"]
    assert e.on_equity(D("400"), T0 + timedelta(days=1)) == []
    assert e.state is TradingState.HALTED


def test_manual_halt_does_not_resume_next_day() -> None:
    e = engine(daily_loss_limit="100")
    e.on_equity(D("1000"), T0)
    e.set_state(TradingState.HALTED, T0)
    assert e.on_equity(D("800"), T0 + timedelta(hours=1)) == []
    assert e.on_equity(D("800"), T0 + timedelta(days=1)) == []
    assert e.state is TradingState.HALTED


# ---- limits -----------------------------------------------------------------------------

def test_limits_convert_and_round_trip_through_json() -> None:
    limits = RiskLimits.from_dict({"max_order_notional": 10000.5, "max_open_orders": "3",
                                   "max_drawdown_pct": "12.5", "daily_loss_limit": 250})
    assert limits.max_order_notional == D("10000.5")
    assert limits.max_open_orders == 3
    data = limits.to_dict()
    assert data["max_order_notional"] == "10000.5"
    assert data["max_position_per_symbol"] is None
    assert RiskLimits.from_dict(json.loads(json.dumps(data))) == limits
    assert RiskLimits().to_dict() == dict.fromkeys(data)


def test_from_dict_refuses_unknown_keys() -> None:
    with pytest.raises(Invalid) as err:
        RiskLimits.from_dict({"max_order_notional": "1", "max_leverage": "3"})
    assert err.value.field == "max_leverage"
    assert "max_leverage" in err.value.message


@pytest.mark.parametrize(("field", "value"), [
    ("max_order_notional", "-1"), ("max_gross_exposure", "NaN"), ("price_band_bps", "Infinity"),
    ("max_position_per_symbol", "abc"), ("max_open_orders", -1), ("max_open_orders", 1.5),
    ("max_orders_per_minute", True), ("daily_loss_limit", "0"), ("max_drawdown_pct", "0"),
    ("max_drawdown_pct", "100.1"),
])
def test_limits_validation_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(Invalid) as err:
        RiskLimits.from_dict({field: value})
    assert err.value.field == field


def test_check_refuses_malformed_input() -> None:
    e = engine()
    with pytest.raises(Invalid) as err:
        e.check(order(), position=D(0), gross_exposure=D(0), open_orders=0, last_price=None,
                now=datetime(2024, 3, 1))  # naive
    assert err.value.field == "now"
    with pytest.raises(Invalid) as err:
        check(e, order(), last="0")
    assert err.value.field == "last_price"


# ---- snapshot / restore -----------------------------------------------------------------

def test_snapshot_restore_round_trip() -> None:
    limits = RiskLimits(max_orders_per_minute=2, daily_loss_limit=D(100), max_drawdown_pct=D(50))
    e = RiskEngine(limits)
    e.on_equity(D("2000"), T0)
    e.on_equity(D("1890"), T0 + timedelta(seconds=1))  # daily loss halt
    e.set_state(TradingState.REDUCING, T0 + timedelta(seconds=2))
    e.on_equity(D("2500"), T0 + timedelta(seconds=3))  # new peak
    assert check(e, order("sell"), position="3", now=T0 + timedelta(seconds=10)).accepted
    snap = json.loads(json.dumps(e.snapshot()))
    r = RiskEngine.restore(limits, snap)
    assert r.snapshot() == e.snapshot()
    assert r.state is TradingState.REDUCING
    # the minute window survived: one more order fits, then the limit bites
    assert check(r, order("sell"), position="3", now=T0 + timedelta(seconds=20)).accepted
    assert check(r, order("sell"), position="3", now=T0 + timedelta(seconds=30)).reason is \
        RiskReason.MAX_ORDERS_PER_MINUTE
    # the peak survived: 50% below 2500 fires the kill switch (and the re-armed daily loss)
    assert [ev.kind for ev in r.on_equity(D("1250"), T0 + timedelta(seconds=40))] == \
        ["halted", "kill_switch"]


def test_restore_of_a_daily_loss_halt_resumes_next_day() -> None:
    limits = RiskLimits(daily_loss_limit=D(100))
    e = RiskEngine(limits)
    e.on_equity(D("1000"), T0)
    e.on_equity(D("900"), T0)
    r = RiskEngine.restore(limits, json.loads(json.dumps(e.snapshot())))
    assert r.state is TradingState.HALTED
    assert r.on_equity(D("900"), T0 + timedelta(hours=1)) == []
    assert r.on_equity(D("900"), T0 + timedelta(days=1))[0].kind == "resumed"


@pytest.mark.parametrize(("key", "value"), [
    ("state", "paused"), ("halt_cause", "oops"), ("day", "yesterday"), ("peak_equity", "x"),
    ("kill_switch_fired", "no"), ("recent_orders", ["2024-03-01T12:00:00"]), ("version", 99),
])
def test_restore_refuses_a_bad_snapshot(key: str, value: Any) -> None:
    snap = engine().snapshot()
    snap[key] = value
    with pytest.raises(Invalid) as err:
        RiskEngine.restore(RiskLimits(), snap)
    assert err.value.field == f"snapshot.{key}"


def test_restore_refuses_a_snapshot_with_a_missing_key() -> None:
    snap = engine().snapshot()
    del snap["peak_equity"]
    with pytest.raises(Invalid) as err:
        RiskEngine.restore(RiskLimits(), snap)
    assert err.value.field == "snapshot.peak_equity"


def test_decisions_and_events_are_json_friendly() -> None:
    d = RiskDecision.reject(RiskReason.HALTED, "trading is halted")
    assert json.loads(json.dumps(d.to_dict())) == {"accepted": False, "reason": "halted",
                                                   "message": "trading is halted"}
    assert RiskDecision.accept().to_dict()["accepted"] is True
    ev = RiskEvent("halted", RiskReason.DAILY_LOSS_LIMIT, "m", T0)
    assert ev.to_dict() == {"kind": "halted", "reason": "daily_loss_limit", "message": "m",
                            "ts": "2024-03-01T12:00:00+00:00"}
