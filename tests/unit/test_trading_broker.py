from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from trading.broker import Broker, Expiry, PaperBroker
from trading.errors import Invalid
from trading.instruments import Bar, Instrument
from trading.orders import Fill, Order, OrderStatus

D = Decimal
T0 = datetime(2024, 1, 2, 10, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
INSTRUMENTS = {
    "AAPL": Instrument("AAPL", D("0.01"), D(1)),
    "BTC-USD": Instrument("BTC-USD", D("0.01"), D("0.0001")),
}


def bar(i: int, o: str, h: str, lo: str, c: str, v: str = "1000", symbol: str = "AAPL",
        ts: datetime | None = None) -> Bar:
    return Bar(symbol, ts or T0 + i * MIN, D(o), D(h), D(lo), D(c), D(v))


def flat(i: int, px: str = "100", v: str = "1000", symbol: str = "AAPL") -> Bar:
    return bar(i, px, px, px, px, v, symbol)


def accepted(cid: str = "o1", **kw: Any) -> Order:
    fields: dict[str, Any] = {"symbol": "AAPL", "side": "buy", "quantity": "10"}
    fields.update(kw)
    order = Order.new(client_order_id=cid, created_at=T0, **fields)
    order.transition(OrderStatus.ACCEPTED, ts=T0)
    return order


def apply(order: Order, events: list[Fill | Expiry]) -> None:
    for event in events:
        if isinstance(event, Fill):
            if event.client_order_id == order.client_order_id:
                order.apply_fill(event)
        elif event.client_order_id == order.client_order_id:
            order.transition(event.status, reason=event.reason, ts=event.ts)


def fills(events: list[Fill | Expiry]) -> list[Fill]:
    return [e for e in events if isinstance(e, Fill)]


def test_paper_broker_satisfies_the_port() -> None:
    broker: Broker = PaperBroker(INSTRUMENTS)
    assert broker.open_orders() == []


@pytest.mark.parametrize(("side", "expected"), [("buy", "100.07"), ("sell", "99.95")])
def test_market_fills_at_next_open_with_slippage_and_fee(side: str, expected: str) -> None:
    broker = PaperBroker(INSTRUMENTS, fee_bps=D(10), slippage_bps=D(5))
    order = accepted(side=side)
    broker.submit(order, T0)
    assert broker.on_bar(bar(0, "100", "101", "99", "100")) == []  # the submission bar
    [fill] = broker.on_bar(bar(1, "100.01", "100.5", "99.5", "100"))
    assert isinstance(fill, Fill)
    # 100.01 * (1 ± 0.0005) = 100.060005 (up to the tick for a buy) / 99.959995 (down for a sell)
    assert fill.price == D(expected)
    assert fill.quantity == D(10)
    assert fill.fee == (D(10) * D(expected) * D("0.001")).quantize(D("0.00000001"))
    assert fill.fee == D("1.00070000") if side == "buy" else D("0.99950000")
    assert (fill.fill_id, fill.ts, fill.side.value) == ("o1:1", T0 + MIN, side)
    assert broker.open_orders() == []


def test_fee_rounds_half_even_to_eight_places() -> None:
    broker = PaperBroker(INSTRUMENTS, fee_bps=D(10))
    broker.submit(accepted(symbol="BTC-USD", quantity="0.0005"), T0)
    [fill] = broker.on_bar(flat(1, "0.05", symbol="BTC-USD"))
    assert isinstance(fill, Fill)
    assert fill.fee == D("0.00000002")  # 0.000000025 exactly: half-even, not half-up


@pytest.mark.parametrize(("side", "limit", "bar_", "expected"), [
    ("buy", "99.50", ("100", "100.5", "99.60", "100"), None),  # not touched
    ("buy", "99.50", ("100", "100.5", "99.40", "100"), "99.50"),  # touched: at the limit
    ("buy", "99.50", ("99", "99.2", "98.5", "99"), "99"),  # gap below: at the open
    ("buy", "99.50", ("100", "100.5", "99.50", "100"), "99.50"),  # exactly touched
    ("sell", "101", ("100", "100.9", "99.5", "100"), None),
    ("sell", "101", ("100", "101.2", "99.5", "101"), "101"),
    ("sell", "101", ("102", "102.5", "101.5", "102"), "102"),
])
def test_limit_orders(side: str, limit: str, bar_: tuple[str, str, str, str],
                      expected: str | None) -> None:
    broker = PaperBroker(INSTRUMENTS, slippage_bps=D(50))  # never applied to limit fills
    broker.submit(accepted(side=side, type="limit", limit_price=limit), T0)
    events = broker.on_bar(bar(1, *bar_))
    if expected is None:
        assert events == []
        assert broker.open_orders() == ["o1"]
    else:
        [fill] = events
        assert isinstance(fill, Fill)
        assert fill.price == D(expected)


@pytest.mark.parametrize(("side", "stop", "quiet", "trigger", "slip", "expected"), [
    ("buy", "101", ("100", "100.9", "99.5", "100"), ("100.5", "101.5", "100", "101"), "0", "101"),
    ("buy", "101", ("100", "100.9", "99.5", "100"), ("102", "103", "101.5", "102"), "0", "102"),
    ("buy", "101", ("100", "100.9", "99.5", "100"), ("100.5", "101.5", "100", "101"), "10", "101.11"),
    ("sell", "99", ("100", "100.5", "99.1", "100"), ("99.5", "99.8", "98.5", "99"), "0", "99"),
    ("sell", "99", ("100", "100.5", "99.1", "100"), ("99.5", "99.8", "98.5", "99"), "10", "98.90"),
])
def test_stop_orders_trigger_then_fill_like_market(side: str, stop: str, quiet: tuple[str, str, str, str],
                                                   trigger: tuple[str, str, str, str], slip: str,
                                                   expected: str) -> None:
    broker = PaperBroker(INSTRUMENTS, slippage_bps=D(slip))
    broker.submit(accepted(side=side, type="stop", stop_price=stop), T0)
    assert broker.on_bar(bar(1, *quiet)) == []
    [fill] = broker.on_bar(bar(2, *trigger))
    assert isinstance(fill, Fill)
    assert fill.price == D(expected)


def test_stop_limit_triggers_then_fills_on_a_later_bar() -> None:
    broker = PaperBroker(INSTRUMENTS)
    order = accepted(type="stop_limit", stop_price="105", limit_price="104")
    broker.submit(order, T0)
    assert broker.on_bar(bar(1, "103", "104.9", "103", "104")) == []  # no trigger
    assert broker.on_bar(bar(2, "104.6", "106", "104.5", "105")) == []  # triggered; 104 not reached
    working = broker.order("o1")
    assert working is not None and working.triggered
    assert not order.triggered  # the caller's object is untouched
    [fill] = broker.on_bar(bar(3, "104.5", "104.8", "103.5", "104"))  # below the stop: still triggered
    assert isinstance(fill, Fill)
    assert fill.price == D(104)


def test_stop_limit_fills_on_the_trigger_bar_when_the_limit_is_reachable() -> None:
    broker = PaperBroker(INSTRUMENTS)
    broker.submit(accepted(type="stop_limit", stop_price="101", limit_price="102"), T0)
    [fill] = broker.on_bar(bar(1, "100", "103", "99.5", "102.5"))
    assert isinstance(fill, Fill)
    assert fill.price == D(101)  # the trigger price, within the limit


def test_partial_fills_across_bars_with_a_volume_share() -> None:
    broker = PaperBroker(INSTRUMENTS, max_volume_share=D("0.1"))
    order = accepted(quantity="250")
    broker.submit(order, T0)
    seen: list[Fill] = []
    for i, volume in enumerate(["1005", "1000", "1000"], start=1):
        events = broker.on_bar(flat(i, "100", volume))
        apply(order, events)
        seen += fills(events)
    assert [(f.fill_id, f.quantity) for f in seen] == [("o1:1", 100), ("o1:2", 100), ("o1:3", 50)]
    assert order.status is OrderStatus.FILLED and order.filled_quantity == 250
    assert broker.open_orders() == []


def test_the_volume_share_is_shared_by_the_orders_of_a_bar_first_come_first_served() -> None:
    broker = PaperBroker(INSTRUMENTS, max_volume_share=D("0.1"))
    broker.submit(accepted("a", quantity="80"), T0)
    broker.submit(accepted("b", quantity="80"), T0)
    first = fills(broker.on_bar(flat(1)))
    assert [(f.fill_id, f.quantity) for f in first] == [("a:1", 80), ("b:1", 20)]
    second = fills(broker.on_bar(flat(2)))
    assert [(f.fill_id, f.quantity) for f in second] == [("b:2", 60)]


def test_ioc_cancels_the_unfilled_remainder() -> None:
    broker = PaperBroker(INSTRUMENTS, max_volume_share=D("0.1"))
    order = accepted(quantity="250", time_in_force="ioc")
    broker.submit(order, T0)
    events = broker.on_bar(flat(1))
    assert [type(e) for e in events] == [Fill, Expiry]
    assert events[1] == Expiry("o1", OrderStatus.CANCELED, "ioc_unfilled", T0 + MIN)
    apply(order, events)
    assert order.status is OrderStatus.CANCELED and order.filled_quantity == 100
    assert broker.open_orders() == [] and broker.on_bar(flat(2)) == []


def test_ioc_limit_not_touched_on_its_first_eligible_bar_is_canceled() -> None:
    broker = PaperBroker(INSTRUMENTS, latency_bars=1)
    broker.submit(accepted(type="limit", limit_price="90", time_in_force="ioc"), T0)
    assert broker.on_bar(flat(1)) == []  # latency: not yet eligible
    assert broker.on_bar(flat(2)) == [Expiry("o1", OrderStatus.CANCELED, "ioc_unfilled", T0 + 2 * MIN)]


def test_day_orders_expire_when_a_bar_of_a_new_utc_date_arrives() -> None:
    late = datetime(2024, 1, 2, 23, 58, tzinfo=UTC)
    broker = PaperBroker(INSTRUMENTS)
    day, gtc = accepted("day", type="limit", limit_price="99", time_in_force="day"), \
        accepted("gtc", type="limit", limit_price="99")
    broker.submit(day, late)
    broker.submit(gtc, late)
    assert broker.on_bar(bar(0, "100", "100", "100", "100", ts=late + MIN)) == []
    midnight = datetime(2024, 1, 3, tzinfo=UTC)
    events = broker.on_bar(bar(0, "100", "100", "98", "99", ts=midnight))  # would fill both
    assert events[0] == Expiry("day", OrderStatus.EXPIRED, "end_of_day", midnight)
    assert [(f.client_order_id, f.price) for f in fills(events)] == [("gtc", D(99))]
    apply(day, events)
    assert day.status is OrderStatus.EXPIRED


def test_no_fill_on_the_submission_bar_or_earlier() -> None:
    broker = PaperBroker(INSTRUMENTS)
    broker.submit(accepted(), T0 + MIN)
    assert broker.on_bar(flat(0)) == []
    assert broker.on_bar(flat(1)) == []  # the bar stamped with the submission time itself
    assert broker.on_bar(flat(2, symbol="BTC-USD")) == []  # another symbol
    [fill] = broker.on_bar(flat(2, "101"))
    assert isinstance(fill, Fill)
    assert (fill.price, fill.ts) == (D(101), T0 + 2 * MIN)


def test_latency_bars_delay_the_first_eligible_bar_of_the_symbol() -> None:
    broker = PaperBroker(INSTRUMENTS, latency_bars=2)
    broker.submit(accepted(), T0)
    assert broker.on_bar(flat(1)) == []
    assert broker.on_bar(flat(1, symbol="BTC-USD")) == []  # does not count
    assert broker.on_bar(flat(2)) == []
    [fill] = broker.on_bar(flat(3, "103"))
    assert isinstance(fill, Fill)
    assert fill.price == D(103)


def _session() -> list[Fill | Expiry]:
    broker = PaperBroker(INSTRUMENTS, fee_bps=D(3), slippage_bps=D(2), max_volume_share=D("0.05"))
    broker.submit(accepted("m", quantity="120"), T0)
    broker.submit(accepted("s", side="sell", type="stop", stop_price="99", quantity="30"), T0)
    events: list[Fill | Expiry] = []
    for i, px in enumerate(["100", "99.5", "98.7", "99.2"], start=1):
        events += broker.on_bar(bar(i, px, str(D(px) + 1), str(D(px) - 1), px))
    return events


def test_fill_ids_and_fills_are_deterministic() -> None:
    first, second = _session(), _session()
    assert first == second
    assert [f.fill_id for f in fills(first)] == ["m:1", "m:2", "m:3", "s:1"]


def test_the_callers_order_is_never_mutated() -> None:
    broker = PaperBroker(INSTRUMENTS, max_volume_share=D("0.1"))
    order = accepted(quantity="150")
    before = order.copy()
    broker.submit(order, T0)
    events = broker.on_bar(flat(1))
    assert order == before
    apply(order, events)
    assert order == broker.order("o1")  # the caller catches up by applying the events


def test_submit_refuses_orders_not_accepted_and_unknown_symbols() -> None:
    broker = PaperBroker(INSTRUMENTS)
    fresh = Order.new(client_order_id="n", symbol="AAPL", side="buy", quantity="1")
    with pytest.raises(Invalid) as err:
        broker.submit(fresh, T0)
    assert err.value.field == "status"
    with pytest.raises(Invalid) as err:
        broker.submit(accepted(symbol="MSFT"), T0)
    assert err.value.field == "symbol"
    broker.submit(accepted(), T0)
    with pytest.raises(Invalid) as err:
        broker.submit(accepted(), T0)
    assert err.value.field == "client_order_id"
    with pytest.raises(Invalid) as err:
        broker.submit(accepted("x"), datetime(2024, 1, 2))  # naive
    assert err.value.field == "ts"


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"fee_bps": D(-1)}, "fee_bps"), ({"slippage_bps": D("-0.1")}, "slippage_bps"),
    ({"latency_bars": -1}, "latency_bars"), ({"max_volume_share": D(0)}, "max_volume_share"),
    ({"max_volume_share": D("1.01")}, "max_volume_share"),
])
def test_settings_are_validated(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(Invalid) as err:
        PaperBroker(INSTRUMENTS, **kwargs)
    assert err.value.field == field
    PaperBroker(INSTRUMENTS, max_volume_share=D(1))


def test_cancel_returns_an_expiry_for_open_orders_only() -> None:
    broker = PaperBroker(INSTRUMENTS)
    order = accepted(type="limit", limit_price="90")
    broker.submit(order, T0)
    broker.submit(accepted("m"), T0)
    apply(order, broker.on_bar(flat(1)))  # fills m only
    assert broker.cancel("m", T0 + 2 * MIN) is None  # done
    assert broker.cancel("nope", T0) is None
    expiry = broker.cancel("o1", T0 + 2 * MIN)
    assert expiry == Expiry("o1", OrderStatus.CANCELED, "canceled", T0 + 2 * MIN)
    assert broker.open_orders() == [] and broker.cancel("o1", T0) is None
    with pytest.raises(Invalid):
        Expiry("o1", OrderStatus.FILLED, "x", T0)


def test_restore_continues_open_orders_and_their_fill_numbering() -> None:
    first = PaperBroker(INSTRUMENTS, max_volume_share=D("0.1"))
    order = accepted(quantity="250")
    done = accepted("done")
    first.submit(done, T0)
    first.submit(order, T0)
    events = first.on_bar(flat(1, v="2000"))
    apply(order, events)
    apply(done, events)
    assert order.filled_quantity == 190 and done.status is OrderStatus.FILLED
    rebuilt = PaperBroker(INSTRUMENTS, max_volume_share=D("0.1"))
    rebuilt.restore([order, done], fills_so_far={"o1": 1}, as_of=T0 + MIN)
    assert rebuilt.open_orders() == ["o1"]
    assert rebuilt.on_bar(flat(1, v="2000")) == []  # not after as_of
    [fill] = rebuilt.on_bar(flat(2, "101", v="2000"))
    assert isinstance(fill, Fill)
    assert (fill.fill_id, fill.quantity, fill.price) == ("o1:2", D(60), D(101))
    apply(order, [fill])
    assert order.status is OrderStatus.FILLED and order.quantity == 250


def test_restore_defaults_to_created_at_and_keeps_a_stop_triggered() -> None:
    order = accepted(type="stop_limit", stop_price="105", limit_price="104")
    order.triggered = True
    broker = PaperBroker(INSTRUMENTS)
    broker.restore([order])
    assert broker.on_bar(flat(0, "103")) == []  # created_at itself
    [fill] = broker.on_bar(flat(1, "103"))  # below the stop, but already triggered
    assert isinstance(fill, Fill)
    assert (fill.fill_id, fill.price) == ("o1:1", D(103))
    with pytest.raises(Invalid):
        broker.restore([accepted("x")], fills_so_far={"x": -1})


def _every_kind(*, adopt: bool) -> tuple[list[Order], list[Fill | Expiry]]:
    """Submit one order of each type and time in force; run bars through; return orders and events."""
    broker = PaperBroker(INSTRUMENTS, fee_bps=D(3), slippage_bps=D(2), max_volume_share=D("0.1"))
    orders = [accepted("m", quantity="150"),
              accepted("l", side="sell", type="limit", limit_price="100.5", quantity="40"),
              accepted("s", type="stop", stop_price="101", quantity="30"),
              accepted("sl", type="stop_limit", stop_price="101", limit_price="100.2", quantity="20"),
              accepted("ioc", quantity="250", time_in_force="ioc"),
              accepted("day", type="limit", limit_price="90", time_in_force="day"),
              accepted("left", type="limit", limit_price="50")]
    for order in orders:
        broker.submit(order, T0, adopt=adopt)
    events: list[Fill | Expiry] = []
    for i, px in enumerate(["100", "101.5", "100.1", "100.8"], start=1):
        events += broker.on_bar(bar(i, px, str(D(px) + 1), str(D(px) - 1), px, v="1000"))
    new_day = datetime(2024, 1, 3, 9, tzinfo=UTC)
    events += broker.on_bar(bar(0, "95", "95", "95", "95", ts=new_day))
    expiry = broker.cancel("left", T0 + 9 * MIN, reason="end_of_backtest")
    assert expiry == Expiry("left", OrderStatus.CANCELED, "end_of_backtest", T0 + 9 * MIN)
    return orders, [*events, expiry]


def test_an_adopted_order_ends_as_the_callers_copy_does_after_applying_the_events() -> None:
    copied, events = _every_kind(adopt=False)
    adopted, adopted_events = _every_kind(adopt=True)
    assert adopted_events == events  # the same fills and expiries
    assert {e.client_order_id for e in events} == {o.client_order_id for o in copied}
    for order in copied:
        apply(order, events)
    assert adopted == copied  # statuses, reasons, quantities, prices, fees; never `triggered`
    assert [o.status for o in adopted] == [OrderStatus.FILLED, OrderStatus.FILLED, OrderStatus.FILLED,
                                           OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.EXPIRED,
                                           OrderStatus.CANCELED]
    assert adopted[-1].reason == "end_of_backtest" and not any(o.triggered for o in adopted)


def test_the_broker_tracks_a_trigger_without_touching_an_adopted_order() -> None:
    broker = PaperBroker(INSTRUMENTS)
    order = accepted(type="stop_limit", stop_price="105", limit_price="104")
    broker.submit(order, T0, adopt=True)
    assert broker.on_bar(bar(1, "104.6", "106", "104.5", "105")) == []  # triggered; 104 not reached
    working = broker.order("o1")
    assert working is not None and working.triggered and working is not order
    assert not order.triggered and order.status is OrderStatus.ACCEPTED
    [fill] = broker.on_bar(bar(2, "104.5", "104.8", "103.5", "104"))
    assert isinstance(fill, Fill)
    assert order.status is OrderStatus.FILLED and order.average_fill_price == D(104)


# -- orders that arrive after their next bar (recent_bars, catch_up) ----------------------------

LATE_CASES: list[dict[str, Any]] = [
    {"type": "market"},
    {"type": "market", "side": "sell"},
    {"type": "limit", "limit_price": "98"},  # reached on the third bar only
    {"type": "stop", "stop_price": "103"},
    {"type": "stop_limit", "stop_price": "103", "limit_price": "102.5"},
    {"type": "limit", "limit_price": "98", "time_in_force": "ioc"},  # canceled on the first
    {"type": "limit", "limit_price": "90", "time_in_force": "day"},  # expires at the new day
]


def _late_bars() -> list[Bar]:
    return [bar(1, "100", "101", "99", "100"), bar(2, "101", "104", "100", "103"),
            bar(3, "99", "100", "97", "98"),
            bar(0, "98", "99", "97", "98", ts=T0.replace(hour=0) + timedelta(days=1))]


@pytest.mark.parametrize("fields", LATE_CASES)
@pytest.mark.parametrize("latency", [0, 1])
def test_an_order_caught_up_on_kept_bars_ends_as_if_it_had_been_working(
        fields: dict[str, Any], latency: int) -> None:
    early = PaperBroker(INSTRUMENTS, fee_bps=D(3), slippage_bps=D(2), latency_bars=latency)
    early.submit(accepted(**fields), T0)
    expected = [e for b in _late_bars() for e in early.on_bar(b)]

    late = PaperBroker(INSTRUMENTS, fee_bps=D(3), slippage_bps=D(2), latency_bars=latency,
                       recent_bars=8)
    for b in _late_bars():
        assert late.on_bar(b) == []  # nothing working yet
    late.submit(accepted(**fields), T0)
    assert late.catch_up("o1") == expected
    assert expected  # every case fills or ends on these bars
    assert late.open_orders() == early.open_orders() == []


def test_catch_up_uses_only_bars_after_the_submission() -> None:
    broker = PaperBroker(INSTRUMENTS, recent_bars=4)
    broker.on_bar(flat(-1, "90"))
    broker.on_bar(flat(0, "95"))  # ts == submission: not eligible (no look-ahead)
    broker.submit(accepted(), T0)
    assert broker.catch_up("o1") == []
    assert broker.open_orders() == ["o1"]
    [fill] = fills(broker.on_bar(flat(1, "101")))
    assert fill.price == D(101) and fill.ts == T0 + MIN


def test_catch_up_shares_a_kept_bars_volume_with_the_orders_already_filled_on_it() -> None:
    broker = PaperBroker(INSTRUMENTS, max_volume_share=D("0.1"), recent_bars=4)
    broker.submit(accepted("first", quantity="60"), T0)
    assert fills(broker.on_bar(flat(1, v="1000")))[0].quantity == D(60)  # cap 100, 40 left
    broker.submit(accepted("late", quantity="70"), T0)
    [part] = fills(broker.catch_up("late"))
    assert (part.quantity, part.ts) == (D(40), T0 + MIN)
    assert broker.open_orders() == ["late"]
    [rest] = fills(broker.on_bar(flat(2, v="1000")))
    assert (rest.fill_id, rest.quantity) == ("late:2", D(30))


def test_only_the_last_recent_bars_are_kept_and_none_by_default() -> None:
    kept = PaperBroker(INSTRUMENTS, recent_bars=2)
    plain = PaperBroker(INSTRUMENTS)
    for i in (1, 2, 3):
        kept.on_bar(flat(i, str(100 + i)))
        plain.on_bar(flat(i, str(100 + i)))
    kept.submit(accepted(), T0)
    plain.submit(accepted(), T0)
    assert [f.price for f in fills(kept.catch_up("o1"))] == [D(102)]  # bar 1 is gone
    assert plain.catch_up("o1") == [] and plain.open_orders() == ["o1"]
    assert kept.catch_up("unknown") == []


@pytest.mark.parametrize("value", [-1, 1.5, True, "2"])
def test_recent_bars_must_be_a_non_negative_integer(value: Any) -> None:
    with pytest.raises(Invalid) as err:
        PaperBroker(INSTRUMENTS, recent_bars=value)
    assert err.value.field == "recent_bars"
