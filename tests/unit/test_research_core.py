"""Research helpers: metrics in JSON, thinned equity curves, search spaces, objectives, the split."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from trading.builtin_strategies import SmaCrossover
from trading.errors import Invalid
from trading.metrics import Metrics, compute_metrics
from trading.research import (
    MAX_CHOICES,
    MAX_CURVE_POINTS,
    Dimension,
    SearchSpace,
    metrics_from_json,
    metrics_to_json,
    objective_value,
    split_at,
    thin_curve,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
DECLARED = SmaCrossover.params  # fast: int 1..1000, slow: int 2..5000, quantity: Decimal > 0, allow_short


def curve_of(values: Sequence[Any], step: timedelta = DAY) -> list[tuple[datetime, Any]]:
    return [(T0 + i * step, v) for i, v in enumerate(values)]


def metrics_of(values: Sequence[str], capital: int = 100) -> Metrics:
    return compute_metrics(curve_of([Decimal(v) for v in values]), [], capital=capital)


def refused(call: Any, *args: Any, **kwargs: Any) -> Invalid:
    with pytest.raises(Invalid) as caught:
        call(*args, **kwargs)
    return caught.value


# -- metrics in JSON -------------------------------------------------------------------------------


def test_metrics_round_trip_through_json() -> None:
    metrics = metrics_of(["110", "99", "108.9", "120", "115"])
    data = metrics_to_json(metrics)
    assert data["interval"] == 86400.0
    assert data["max_drawdown_duration"] == metrics.max_drawdown_duration.total_seconds()
    assert data["max_drawdown_duration"] > 0
    assert metrics_from_json(json.loads(json.dumps(data, allow_nan=False))) == metrics


def test_metrics_with_undefined_ratios_round_trip() -> None:
    metrics = metrics_of(["100", "100", "100"])  # flat: no Sharpe, Sortino, Calmar, drawdown
    assert (metrics.sharpe, metrics.sortino, metrics.calmar) == (None, None, None)
    data = metrics_to_json(metrics)
    assert (data["sharpe"], data["sortino"], data["calmar"]) == (None, None, None)
    assert metrics_from_json(json.loads(json.dumps(data))) == metrics


def test_non_finite_metrics_become_none() -> None:
    metrics = dataclasses.replace(metrics_of(["110", "99"]), cagr=math.inf, sharpe=math.nan,
                                  profit_factor=-math.inf)
    data = metrics_to_json(metrics)
    assert (data["cagr"], data["sharpe"], data["profit_factor"]) == (None, None, None)
    json.dumps(data, allow_nan=False)  # strict JSON


# -- thinning a curve ------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 4, 10])
def test_a_short_curve_is_unchanged(length: int) -> None:
    curve = tuple(curve_of(range(length)))
    thinned = thin_curve(curve, max_points=10)
    assert thinned == list(curve)
    assert isinstance(thinned, list)


def test_the_default_limit() -> None:
    curve = curve_of(range(MAX_CURVE_POINTS))
    assert thin_curve(curve) == curve
    assert len(thin_curve(curve_of(range(MAX_CURVE_POINTS + 1)))) <= MAX_CURVE_POINTS


def random_walk(n: int, seed: int) -> list[tuple[datetime, Decimal]]:
    rng = random.Random(seed)
    value, values = Decimal(1000), []
    for _ in range(n):
        value += Decimal(rng.randint(-100, 100)) / 10
        values.append(value)
    return curve_of(values, timedelta(minutes=1))


def check_thinned(curve: list[tuple[datetime, Any]], max_points: int) -> list[tuple[datetime, Any]]:
    thinned = thin_curve(curve, max_points=max_points)
    assert len(thinned) <= max_points
    assert thinned[0] == curve[0] and thinned[-1] == curve[-1]
    low = min(curve, key=lambda p: p[1])
    high = max(curve, key=lambda p: p[1])
    assert low in thinned and high in thinned
    times = [t for t, _ in thinned]
    assert times == sorted(set(times))  # time order, no point twice
    assert set(thinned) <= set(curve)
    return thinned


@pytest.mark.parametrize("max_points", [4, 5, 6, 7, 10, 101, 2000])
@pytest.mark.parametrize(("n", "seed"), [(11, 1), (50, 2), (1001, 3), (10_000, 4)])
def test_a_long_curve_is_thinned(n: int, seed: int, max_points: int) -> None:
    curve = random_walk(n, seed)
    if n <= max_points:
        assert thin_curve(curve, max_points=max_points) == curve
    else:
        check_thinned(curve, max_points)


def test_the_first_point_is_kept_when_it_is_neither_low_nor_high() -> None:
    # the first point (the starting equity) lies between its neighbours' values
    curve = curve_of([5, 1, 10] + [6] * 20 + [7])
    thinned = check_thinned(curve, 4)
    assert thinned[0] == (T0, 5)


@pytest.mark.parametrize("where", ["first", "last"])
def test_extremes_at_the_ends_are_kept(where: str) -> None:
    values = [Decimal(50 + (i % 7)) for i in range(500)]
    if where == "first":
        values[0], values[1] = Decimal(1), Decimal(99)
    else:
        values[-1], values[-2] = Decimal(1), Decimal(99)
    check_thinned(curve_of(values), 10)


def test_a_thinned_curve_is_not_needlessly_sparse() -> None:
    assert len(thin_curve(random_walk(10_000, 5), max_points=2000)) > 1000


@pytest.mark.parametrize("max_points", [3, 0, -1])
def test_max_points_below_four_is_refused(max_points: int) -> None:
    with pytest.raises(ValueError, match="at least 4"):
        thin_curve(curve_of(range(10)), max_points=max_points)


# -- search spaces ---------------------------------------------------------------------------------


def test_an_int_range() -> None:
    space = SearchSpace.parse({"fast": {"type": "int", "low": 5, "high": 20}}, DECLARED)
    assert space.dimensions == (Dimension("fast", "int", low=5, high=20),)
    assert space.as_dict() == {"fast": {"type": "int", "low": 5, "high": 20}}
    assert space.size() == 16


def test_int_bounds_are_coerced() -> None:
    space = SearchSpace.parse({"fast": {"type": "int", "low": "5", "high": 20.0}}, DECLARED)
    dim = space.dimensions[0]
    assert (dim.low, dim.high) == (5, 20)
    assert type(dim.low) is int and type(dim.high) is int


def test_a_range_of_one_value() -> None:
    space = SearchSpace.parse({"fast": {"type": "int", "low": 7, "high": 7}}, DECLARED)
    assert space.size() == 1


def test_the_declared_bounds_themselves_are_allowed() -> None:
    space = SearchSpace.parse({"fast": {"type": "int", "low": 1, "high": 1000}}, DECLARED)
    assert space.size() == 1000


def test_a_float_range_over_a_decimal_parameter() -> None:
    space = SearchSpace.parse({"quantity": {"type": "float", "low": "0.5", "high": 2}}, DECLARED)
    dim = space.dimensions[0]
    assert (dim.low, dim.high) == (Decimal("0.5"), Decimal(2))
    assert space.as_dict() == {"quantity": {"type": "float", "low": 0.5, "high": 2.0}}
    assert space.size() == math.inf


def test_a_float_range_is_refused_for_an_int_parameter() -> None:
    err = refused(SearchSpace.parse, {"fast": {"type": "float", "low": 1, "high": 5}}, DECLARED)
    assert err.field == "search_space.fast.type"
    assert "a float range does not fit a parameter of type int; use int" in err.message


@pytest.mark.parametrize(("param", "kind"), [("quantity", "int"), ("allow_short", "int"),
                                             ("allow_short", "float")])
def test_a_range_is_refused_for_a_parameter_of_another_type(param: str, kind: str) -> None:
    err = refused(SearchSpace.parse, {param: {"type": kind, "low": 0, "high": 1}}, DECLARED)
    assert err.field == f"search_space.{param}.type"
    assert f"a {kind} range does not fit" in err.message


@pytest.mark.parametrize(("spec", "field"), [
    ({"type": "int", "low": 0, "high": 5}, "search_space.fast.low"),  # min is 1
    ({"type": "int", "low": 5, "high": 1001}, "search_space.fast.high"),  # max is 1000
    ({"type": "int", "low": -3, "high": -1}, "search_space.fast.low"),
    ({"type": "int", "low": 1.5, "high": 5}, "search_space.fast.low"),  # not an integer
    ({"type": "int", "low": "five", "high": 5}, "search_space.fast.low"),
    ({"type": "int", "low": True, "high": 5}, "search_space.fast.low"),
])
def test_bounds_outside_the_declared_ones_are_refused(spec: dict[str, Any], field: str) -> None:
    err = refused(SearchSpace.parse, {"fast": spec}, DECLARED)
    assert err.field == field
    assert err.message.startswith(f"{field}: params.fast must be")


def test_a_float_low_at_an_exclusive_minimum_is_refused() -> None:
    err = refused(SearchSpace.parse, {"quantity": {"type": "float", "low": 0, "high": 1}}, DECLARED)
    assert err.field == "search_space.quantity.low"


def test_low_above_high() -> None:
    err = refused(SearchSpace.parse, {"fast": {"type": "int", "low": 20, "high": 5}}, DECLARED)
    assert err.field == "search_space.fast.low"
    assert "search_space.fast.low (20) is above high (5)" in err.message


@pytest.mark.parametrize("missing", ["low", "high"])
def test_a_range_needs_both_bounds(missing: str) -> None:
    spec = {"type": "int", "low": 5, "high": 20}
    del spec[missing]
    err = refused(SearchSpace.parse, {"fast": spec}, DECLARED)
    assert err.field == f"search_space.fast.{missing}"
    assert "is required" in err.message


@pytest.mark.parametrize(("spec", "key"), [
    ({"type": "int", "low": 5, "high": 20, "step": 2}, "step"),
    ({"type": "choice", "values": [5], "low": 5}, "low"),
])
def test_unknown_keys_are_refused(spec: dict[str, Any], key: str) -> None:
    err = refused(SearchSpace.parse, {"fast": spec}, DECLARED)
    assert err.field == f"search_space.fast.{key}"
    assert f"does not take {key!r}" in err.message


def test_an_unknown_parameter() -> None:
    err = refused(SearchSpace.parse, {"medium": {"type": "int", "low": 1, "high": 2}}, DECLARED)
    assert err.field == "search_space.medium"
    assert "'medium' is not a parameter of the strategy" in err.message
    assert "fast, slow, quantity, allow_short" in err.message


@pytest.mark.parametrize("kind", ["grid", None, 1, "INT"])
def test_an_unknown_dimension_type(kind: Any) -> None:
    err = refused(SearchSpace.parse, {"fast": {"type": kind, "low": 1, "high": 2}}, DECLARED)
    assert err.field == "search_space.fast.type"
    assert "int, float, choice" in err.message


@pytest.mark.parametrize("spec", [[1, 2], "int", 5, None])
def test_a_dimension_must_be_an_object(spec: Any) -> None:
    err = refused(SearchSpace.parse, {"fast": spec}, DECLARED)
    assert err.field == "search_space.fast"


@pytest.mark.parametrize("space", [{}, [], None, "fast", [("fast", {"type": "int"})]])
def test_the_space_must_be_a_non_empty_object(space: Any) -> None:
    err = refused(SearchSpace.parse, space, DECLARED)
    assert err.field == "search_space"


def test_choice_values_are_coerced() -> None:
    space = SearchSpace.parse({"fast": {"type": "choice", "values": ["5", 10.0, 20]},
                               "quantity": {"type": "choice", "values": ["1", 2.5]},
                               "allow_short": {"type": "choice", "values": [True, False]}}, DECLARED)
    fast, quantity, allow_short = space.dimensions
    assert fast == Dimension("fast", "choice", values=(5, 10, 20))
    assert quantity.values == (Decimal(1), Decimal("2.5"))
    assert allow_short.values == (True, False)
    assert space.as_dict()["quantity"] == {"type": "choice", "values": [1.0, 2.5]}
    assert space.size() == 3 * 2 * 2


@pytest.mark.parametrize(("param", "values"), [
    ("fast", [5, 0]), ("fast", [5, 1001]), ("fast", [5, "x"]), ("fast", [5, None]), ("fast", [5, True]),
    ("allow_short", ["yes"]), ("allow_short", [1]), ("quantity", [0]), ("quantity", ["-1"]),
])
def test_an_invalid_choice_is_refused(param: str, values: list[Any]) -> None:
    err = refused(SearchSpace.parse, {param: {"type": "choice", "values": values}}, DECLARED)
    assert err.field == f"search_space.{param}.values"
    assert f"params.{param} must be" in err.message


@pytest.mark.parametrize("values", [[5, 5], [5, "5"], [5, 5.0, 6], [20, 10, 20]])
def test_choices_must_not_repeat(values: list[Any]) -> None:
    err = refused(SearchSpace.parse, {"fast": {"type": "choice", "values": values}}, DECLARED)
    assert err.field == "search_space.fast.values"
    assert "must not repeat" in err.message


@pytest.mark.parametrize("values", [[], None, 5, "5", (5, 6), list(range(1, MAX_CHOICES + 2))])
def test_choices_must_be_a_list_of_1_to_max_values(values: Any) -> None:
    err = refused(SearchSpace.parse, {"fast": {"type": "choice", "values": values}}, DECLARED)
    assert err.field == "search_space.fast.values"
    assert f"1 to {MAX_CHOICES} values" in err.message


def test_the_most_choices_allowed() -> None:
    space = SearchSpace.parse({"fast": {"type": "choice", "values": list(range(1, MAX_CHOICES + 1))}},
                              DECLARED)
    assert space.size() == MAX_CHOICES


def test_a_parameter_both_searched_and_fixed() -> None:
    space = {"fast": {"type": "int", "low": 5, "high": 20}}
    err = refused(SearchSpace.parse, space, DECLARED, fixed={"fast": 10, "slow": 50})
    assert err.field == "search_space.fast"
    assert "'fast' is both searched and fixed" in err.message
    # fixing another parameter is fine
    assert SearchSpace.parse(space, DECLARED, fixed={"slow": 50}).size() == 16
    assert SearchSpace.parse(space, DECLARED, fixed={}).size() == 16


def test_dimensions_follow_the_declaration_order_and_size_multiplies() -> None:
    space = SearchSpace.parse({"allow_short": {"type": "choice", "values": [False, True]},
                               "slow": {"type": "choice", "values": [30, 40, 50]},
                               "fast": {"type": "int", "low": 5, "high": 20}}, DECLARED)
    assert [d.name for d in space.dimensions] == ["fast", "slow", "allow_short"]
    assert list(space.as_dict()) == ["fast", "slow", "allow_short"]
    assert space.size() == 16 * 3 * 2


def test_a_float_range_makes_the_space_infinite() -> None:
    space = SearchSpace.parse({"fast": {"type": "int", "low": 5, "high": 20},
                               "quantity": {"type": "float", "low": 1, "high": 2}}, DECLARED)
    assert space.size() == math.inf


# -- objectives ------------------------------------------------------------------------------------


def test_objective_values() -> None:
    metrics = metrics_of(["110", "99", "108.9", "120"])
    assert metrics.sharpe is not None and metrics.calmar is not None
    assert objective_value(metrics, "sharpe") == metrics.sharpe
    assert objective_value(metrics, "calmar") == metrics.calmar
    assert objective_value(metrics, "return") == pytest.approx(0.2)


def test_the_drawdown_cap() -> None:
    metrics = metrics_of(["110", "99", "108.9", "120"])
    assert metrics.max_drawdown == pytest.approx(0.1)
    assert objective_value(metrics, "sharpe", max_drawdown=0.05) is None
    assert objective_value(metrics, "return", max_drawdown=0.05) is None
    assert objective_value(metrics, "sharpe", max_drawdown=0.2) == metrics.sharpe
    # a drawdown equal to the cap does not break it
    assert objective_value(metrics, "sharpe", max_drawdown=metrics.max_drawdown) == metrics.sharpe


def test_an_undefined_ratio_gives_none() -> None:
    flat = metrics_of(["100", "100", "100"])
    assert objective_value(flat, "sharpe") is None
    assert objective_value(flat, "calmar") is None  # no drawdown
    assert objective_value(flat, "return") == 0.0
    rising = metrics_of(["101", "102", "103"])
    assert objective_value(rising, "calmar") is None
    assert objective_value(rising, "sharpe") is not None


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_a_non_finite_score_gives_none(value: float) -> None:
    metrics = dataclasses.replace(metrics_of(["110", "99", "120"]), sharpe=value, total_return=value)
    assert objective_value(metrics, "sharpe") is None
    assert objective_value(metrics, "return") is None


@pytest.mark.parametrize("objective", ["sortino", "Sharpe", "", "total_return"])
def test_an_unknown_objective(objective: str) -> None:
    metrics = metrics_of(["110", "99"])
    err = refused(objective_value, metrics, objective)
    assert err.field == "objective"
    assert "sharpe, calmar, return" in err.message
    # refused even when the drawdown cap alone would give None
    assert refused(objective_value, metrics, objective, max_drawdown=0.0).field == "objective"


# -- the in-sample split ---------------------------------------------------------------------------


def test_seventy_percent_of_seven_days() -> None:
    assert split_at(T0, T0 + 7 * DAY, 0.7) == T0 + timedelta(days=4, hours=21, minutes=36)
    assert split_at(T0, T0 + 7 * DAY, 0.7) == T0 + timedelta(days=4.9)


@pytest.mark.parametrize(("days", "fraction", "expected"), [
    (1, 0.7, timedelta(hours=16, minutes=48)),
    (4, 0.7, timedelta(days=2, hours=19, minutes=12)),
    (5, 0.29, timedelta(days=1, hours=10, minutes=48)),
    (250, 0.7, timedelta(days=175)),
    (300, 0.58, timedelta(days=174)),
    (10, 0.5, timedelta(days=5)),
])
def test_the_split_is_exact_where_float_products_fall_short(days: int, fraction: float,
                                                            expected: timedelta) -> None:
    # e.g. 250 days * 0.7 in floats is 15119999.999... seconds, which must not lose a second
    assert split_at(T0, T0 + days * DAY, fraction) == T0 + expected


def test_the_split_is_floored_to_whole_seconds() -> None:
    assert split_at(T0, T0 + timedelta(seconds=10), 0.15) == T0 + timedelta(seconds=1)
    assert split_at(T0, T0 + timedelta(seconds=3), 0.5) == T0 + timedelta(seconds=1)


@pytest.mark.parametrize("fraction", [0.1, 0.95, 0.5])
def test_fraction_bounds_are_inclusive(fraction: float) -> None:
    split = split_at(T0, T0 + 100 * DAY, fraction)
    assert split == T0 + timedelta(days=round(100 * fraction))


@pytest.mark.parametrize("fraction", [0.09, 0.96, 0, 1, -0.5, 1.5, math.nan, math.inf, True, False,
                                      "0.5", None, Decimal("0.5")])
def test_a_bad_fraction_is_refused(fraction: Any) -> None:
    err = refused(split_at, T0, T0 + 7 * DAY, fraction)
    assert err.field == "in_sample"
    assert "between 0.1 and 0.95" in err.message


@pytest.mark.parametrize("end", [T0, T0 - DAY])
def test_the_end_must_be_after_the_start(end: datetime) -> None:
    err = refused(split_at, T0, end, 0.7)
    assert err.field == "to"
    assert "after" in err.message


def test_a_range_of_the_wrong_type_names_the_one_that_fits() -> None:
    exc = refused(SearchSpace.parse, {"quantity": {"type": "int", "low": 1, "high": 2}}, SmaCrossover.params)
    assert exc.field == "search_space.quantity.type" and "use float" in exc.message
    exc = refused(SearchSpace.parse, {"fast": {"type": "float", "low": 1, "high": 2}}, SmaCrossover.params)
    assert "use int" in exc.message
