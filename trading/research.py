"""What backtests and optimisations report, in JSON, and how a search is judged.

Pure helpers shared by the job that runs a backtest or a Tune search (it builds the
payloads), the gateway that stores them (it reads them back) and the report:

* `metrics_to_json` / `metrics_from_json`: `Metrics` with durations in seconds.
* `thin_curve`: an equity curve cut to at most `max_points` points for storage and charts,
  keeping the first and last points and each bucket's lowest and highest point between them
  (drawdowns stay visible).
* `SearchSpace`: a search space over a strategy's declared parameters, validated against
  the `Param`s (type, bounds, choices) before anything runs.
* `objective_value`: the number a trial is ranked by (Sharpe, Calmar, or total return),
  None when the trial breaks the drawdown cap or the ratio is undefined.
* `split_at`: where the in-sample period ends and the out-of-sample one begins.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from trading.errors import Invalid
from trading.metrics import Metrics
from trading.orders import Fill
from trading.strategy import Param

OBJECTIVES = ("sharpe", "calmar", "return")
DIMENSION_TYPES = ("int", "float", "choice")
MAX_CURVE_POINTS = 2000
MAX_STORED_TRADES = 100_000
MAX_CHOICES = 100


def metrics_to_json(metrics: Metrics) -> dict[str, Any]:
    """Return `metrics` as JSON-friendly values: durations in seconds, NaN/inf as None."""
    out: dict[str, Any] = {}
    for f in fields(Metrics):
        value = getattr(metrics, f.name)
        if isinstance(value, timedelta):
            value = value.total_seconds()
        elif isinstance(value, float) and not math.isfinite(value):
            value = None
        out[f.name] = value
    return out


def metrics_from_json(data: Mapping[str, Any]) -> Metrics:
    """Rebuild `Metrics` from `metrics_to_json` output."""
    values = dict(data)
    for name in ("max_drawdown_duration", "interval"):
        values[name] = timedelta(seconds=float(values[name]))
    return Metrics(**{f.name: values[f.name] for f in fields(Metrics)})


def thin_curve(curve: Sequence[tuple[datetime, Any]], max_points: int = MAX_CURVE_POINTS
               ) -> list[tuple[datetime, Any]]:
    """Return at most `max_points` points of `curve` (see the module docstring), in time order."""
    if max_points < 4:
        raise ValueError("max_points must be at least 4")
    if len(curve) <= max_points:
        return list(curve)
    buckets = (max_points - 2) // 2  # two points each, between the first and the last
    size = math.ceil((len(curve) - 2) / buckets)
    kept = [0]
    for start in range(1, len(curve) - 1, size):
        idx = range(start, min(start + size, len(curve) - 1))
        low = min(idx, key=lambda i: curve[i][1])
        high = max(idx, key=lambda i: curve[i][1])
        kept.extend(sorted({low, high}))
    kept.append(len(curve) - 1)
    return [curve[i] for i in kept]


def fill_to_json(fill: Fill) -> dict[str, str]:
    return {"ts": fill.ts.isoformat(), "symbol": fill.symbol, "side": fill.side.value,
            "quantity": str(fill.quantity), "price": str(fill.price), "fee": str(fill.fee),
            "client_order_id": fill.client_order_id}


@dataclass(frozen=True)
class Dimension:
    """One searched parameter: an integer or float range (inclusive), or a list of choices."""

    name: str
    type: str
    low: Any = None
    high: Any = None
    values: tuple[Any, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        if self.type == "choice":
            return {"type": "choice", "values": [_plain(v) for v in self.values]}
        return {"type": self.type, "low": _plain(self.low), "high": _plain(self.high)}

    def size(self) -> float:
        """How many distinct values the dimension has (inf for a float range)."""
        if self.type == "choice":
            return len(self.values)
        if self.type == "int":
            return int(self.high) - int(self.low) + 1
        return math.inf


def _plain(value: Any) -> Any:
    return float(value) if isinstance(value, Decimal) else value


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space: dimensions over declared parameters, in declaration order."""

    dimensions: tuple[Dimension, ...]

    @classmethod
    def parse(cls, space: Any, declared: Mapping[str, Param], *, fixed: Mapping[str, Any] | None = None
              ) -> SearchSpace:
        """Validate `space` (``{param: {"type": "int"|"float"|"choice", ...}}``) against `declared`.

        ``int`` and ``float`` take ``low`` and ``high`` (inclusive, within the parameter's
        bounds; ``int`` only for int parameters, ``float`` for float or decimal ones);
        ``choice`` takes ``values``, each a valid value of the parameter. A parameter may
        not be both searched and in `fixed`. Raise `Invalid` naming ``search_space.<param>``.
        """
        if not isinstance(space, Mapping) or not space:
            raise Invalid("search_space must be an object with at least one parameter",
                          field="search_space")
        dims = []
        for name, spec in space.items():
            field = f"search_space.{name}"
            param = declared.get(name)
            if param is None:
                known = ", ".join(declared) or "none"
                raise Invalid(f"{name!r} is not a parameter of the strategy (known: {known})", field=field)
            if fixed and name in fixed:
                raise Invalid(f"{name!r} is both searched and fixed in params", field=field)
            dims.append(_dimension(name, spec, param, field))
        order = list(declared)
        return cls(tuple(sorted(dims, key=lambda d: order.index(d.name))))

    def as_dict(self) -> dict[str, Any]:
        return {d.name: d.as_dict() for d in self.dimensions}

    def size(self) -> float:
        """The number of distinct parameter combinations (inf with a float range)."""
        return math.prod(d.size() for d in self.dimensions)


def _dimension(name: str, spec: Any, param: Param, field: str) -> Dimension:
    if not isinstance(spec, Mapping):
        raise Invalid(f"{field} must be an object with a type", field=field)
    kind = spec.get("type")
    if kind not in DIMENSION_TYPES:
        raise Invalid(f"{field}.type must be one of {', '.join(DIMENSION_TYPES)}", field=f"{field}.type")
    allowed = {"choice": {"type", "values"}}.get(kind, {"type", "low", "high"})
    extra = sorted(set(spec) - allowed)
    if extra:
        raise Invalid(f"{field} does not take {extra[0]!r}", field=f"{field}.{extra[0]}")
    if kind == "choice":
        values = spec.get("values")
        if not isinstance(values, list) or not values or len(values) > MAX_CHOICES:
            raise Invalid(f"{field}.values must be a list of 1 to {MAX_CHOICES} values",
                          field=f"{field}.values")
        coerced = tuple(_coerce(param, name, v, f"{field}.values") for v in values)
        if len(set(coerced)) != len(coerced):
            raise Invalid(f"{field}.values must not repeat", field=f"{field}.values")
        return Dimension(name, kind, values=coerced)
    wanted = int if kind == "int" else (float, Decimal)
    if param.type not in (wanted if isinstance(wanted, tuple) else (wanted,)):
        raise Invalid(f"{field}: a {kind} range does not fit a parameter of type "
                      f"{param.describe()['type']}; use {_fitting(param)}",
                      field=f"{field}.type")
    for key in ("low", "high"):
        if key not in spec:
            raise Invalid(f"{field}.{key} is required", field=f"{field}.{key}")
    low = _coerce(param, name, spec["low"], f"{field}.low")
    high = _coerce(param, name, spec["high"], f"{field}.high")
    if low > high:
        raise Invalid(f"{field}.low ({low}) is above high ({high})", field=f"{field}.low")
    return Dimension(name, kind, low=low, high=high)


def _fitting(param: Param) -> str:
    """The dimension type that fits a parameter: int, float, or choice (bool, str)."""
    if param.type is int:
        return "int"
    return "float" if param.type in (float, Decimal) else "choice"


def _coerce(param: Param, name: str, value: Any, field: str) -> Any:
    try:
        return param.coerce(name, value)
    except Invalid as exc:
        raise Invalid(f"{field}: {exc.message}", field=field) from None


def objective_value(metrics: Metrics, objective: str, max_drawdown: float | None = None) -> float | None:
    """Return the score of `metrics` under `objective` (higher is better), or None.

    None when the drawdown exceeds `max_drawdown` (a cap, as a fraction) or the chosen
    ratio is undefined (e.g. Sharpe of a flat curve).
    """
    if objective not in OBJECTIVES:
        raise Invalid(f"objective must be one of {', '.join(OBJECTIVES)}", field="objective")
    if max_drawdown is not None and metrics.max_drawdown > max_drawdown:
        return None
    value = {"sharpe": metrics.sharpe, "calmar": metrics.calmar, "return": metrics.total_return}[objective]
    return None if value is None or not math.isfinite(value) else float(value)


def split_at(start: datetime, end: datetime, in_sample: float) -> datetime:
    """Return where in-sample ends: `in_sample` of the way from `start` to `end` (0.1 to 0.95)."""
    if isinstance(in_sample, bool) or not isinstance(in_sample, int | float) \
            or not 0.1 <= in_sample <= 0.95:
        raise Invalid("in_sample must be a fraction between 0.1 and 0.95", field="in_sample")
    if not end > start:
        raise Invalid("to must be after from", field="to")
    offset = (end - start) * in_sample  # exact to the microsecond, unlike a float of seconds
    return start + offset - timedelta(microseconds=offset.microseconds)
