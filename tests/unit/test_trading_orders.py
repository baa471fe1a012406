from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from trading.errors import Invalid
from trading.instruments import Bar, Instrument
from trading.orders import (
    TRANSITIONS,
    Fill,
    IllegalTransition,
    Order,
    OrderStatus,
    OrderType,
    Side,
)
from trading.values import price, quantity, to_decimal

NOW = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)


def order(**kw: object) -> Order:
    base: dict[str, object] = {"client_order_id": "c-1", "symbol": "BTC-USD", "side": "buy",
                               "type": "limit", "quantity": "2", "limit_price": "100"}
    base.update(kw)
    return Order.new(**base)  # type: ignore[arg-type]


def fill(qty: str, px: str, n: int = 1) -> Fill:
    return Fill(f"c-1:{n}", "c-1", "BTC-USD", Side.BUY, Decimal(qty), Decimal(px),
                Decimal("0.01"), NOW)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "nan", "abc", None, True, -1, 0])
def test_quantities_and_prices_reject_nonsense(bad: object) -> None:
    with pytest.raises(Invalid) as info:
        quantity(bad)
    assert info.value.field == "quantity"
    with pytest.raises(Invalid):
        price(bad, field="limit_price")


def test_floats_become_their_shortest_decimal() -> None:
    assert to_decimal(0.1, field="x") == Decimal("0.1")


@pytest.mark.parametrize(("kw", "field"), [
    ({"type": "limit", "limit_price": None}, "limit_price"),
    ({"type": "stop", "stop_price": None, "limit_price": None}, "stop_price"),
    ({"type": "market"}, "limit_price"),
    ({"type": "limit", "stop_price": "90"}, "stop_price"),
    ({"type": "iceberg"}, "type"), ({"side": "hold"}, "side"), ({"quantity": "-1"}, "quantity"),
    ({"quantity": "NaN"}, "quantity"), ({"time_in_force": "fok"}, "time_in_force"),
    ({"symbol": "btc usd"}, "symbol"), ({"client_order_id": "x" * 65}, "client_order_id"),
    ({"limit_price": "0"}, "limit_price"),
])
def test_order_validation_names_the_field(kw: dict[str, object], field: str) -> None:
    with pytest.raises(Invalid) as info:
        order(**kw)
    assert info.value.field == field


def test_every_order_type_builds() -> None:
    assert order(type="market", limit_price=None).type is OrderType.MARKET
    assert order(type="stop", limit_price=None, stop_price="110").stop_price == Decimal(110)
    assert order(type="stop_limit", stop_price="110").limit_price == Decimal(100)


def test_lifecycle_with_partial_fills() -> None:
    o = order()
    events = [o.transition(OrderStatus.ACCEPTED)]
    events.append(o.apply_fill(fill("0.5", "100")))
    assert (o.status, o.remaining, o.average_fill_price) == (
        OrderStatus.PARTIALLY_FILLED, Decimal("1.5"), Decimal(100))
    events.append(o.apply_fill(fill("1.5", "98", 2)))
    assert o.status is OrderStatus.FILLED and o.remaining == 0
    assert o.average_fill_price == (Decimal("0.5") * 100 + Decimal("1.5") * 98) / 2
    assert o.fees == Decimal("0.02")
    assert [(e.from_status, e.to_status) for e in events] == [
        (OrderStatus.NEW, OrderStatus.ACCEPTED),
        (OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED),
        (OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED)]


@pytest.mark.parametrize("status", list(OrderStatus))
def test_the_table_is_the_only_way(status: OrderStatus) -> None:
    for target in OrderStatus:
        o = order()
        o.status = status
        if target in TRANSITIONS[status]:
            assert o.transition(target).to_status is target
        else:
            with pytest.raises(IllegalTransition):
                o.transition(target)


def test_terminal_states_and_overfill() -> None:
    o = order()
    o.transition(OrderStatus.ACCEPTED)
    with pytest.raises(Invalid):
        o.apply_fill(fill("3", "100"))
    o.transition(OrderStatus.CANCELED, reason="user")
    assert o.status.is_terminal and o.reason == "user"
    with pytest.raises(IllegalTransition):
        o.apply_fill(fill("1", "100"))


def test_instrument_grid_checks() -> None:
    btc = Instrument("BTC-USD", Decimal("0.01"), Decimal("0.001"), Decimal(10))
    btc.check_order(Decimal("0.5"), Decimal("100.01"))
    for qty, px, field in ((Decimal("0.0005"), Decimal(100), "quantity"),
                           (Decimal(1), Decimal("100.001"), "price"),
                           (Decimal("0.001"), Decimal(100), "quantity")):
        with pytest.raises(Invalid) as info:
            btc.check_order(qty, px)
        assert info.value.field == field
    assert btc.round_price(Decimal("100.005")) == Decimal("100.00")
    assert btc.round_price(Decimal("0.001")) == Decimal("0.01")


def test_bars_are_consistent() -> None:
    bar = Bar("AAPL", NOW, "10", "11", "9", "10.5", "1000")
    assert bar.high == Decimal(11)
    with pytest.raises(Invalid) as info:
        Bar("AAPL", NOW, "10", "9.5", "9", "10.5", "1")
    assert info.value.field == "high"
    with pytest.raises(Invalid) as info:
        Bar("AAPL", datetime(2026, 1, 1), "10", "11", "9", "10", "1")
    assert info.value.field == "ts"


def test_the_internal_fill_constructor_builds_what_the_validating_one_does() -> None:
    args = ("c-1:1", "c-1", "BTC-USD", Side.BUY, Decimal("0.5"), Decimal("100.25"), Decimal("0.01"), NOW)
    trusted, checked = Fill._trusted(*args), Fill(*args)
    assert trusted == checked and repr(trusted) == repr(checked) and hash(trusted) == hash(checked)


def test_a_copy_changes_apart_from_its_original() -> None:
    o = order(quantity="2")
    o.transition(OrderStatus.ACCEPTED)
    twin = o.copy()
    assert twin == o and twin is not o
    twin.apply_fill(fill("1", "99"))
    assert o.status is OrderStatus.ACCEPTED and o.filled_quantity == 0
    assert twin.status is OrderStatus.PARTIALLY_FILLED and twin.filled_quantity == 1


def test_enum_fields_accept_their_members_and_refuse_other_values() -> None:
    o = order(side=Side.SELL, type=OrderType.MARKET, limit_price=None, time_in_force="ioc")
    assert (o.side, o.type, o.time_in_force.value) == (Side.SELL, OrderType.MARKET, "ioc")
    for kw, field in [({"side": "BUY"}, "side"), ({"side": 1}, "side"), ({"type": ["limit"]}, "type"),
                      ({"time_in_force": None}, "time_in_force")]:
        with pytest.raises(Invalid) as err:
            order(**kw)
        assert err.value.field == field
