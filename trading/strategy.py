"""Strategies: their parameters, the context they trade through, and a registry.

A `Strategy` talks only to a `StrategyContext`, never to an engine, so the same subclass
runs unchanged in the backtester, a live Ray actor, a Ray Tune search and the local agent:
each engine supplies its own context and calls the hooks (`on_start`, `on_bar` for every
new bar of a subscribed symbol, `on_fill`, `on_stop`).

Parameters are declared as `Param`s and arrive as JSON-ish values (from the API, a Tune
search space or a config file); `Strategy.__init__` coerces them, refuses unknown ones and
fills defaults, raising `Invalid` with the field ``params.<name>``.

    @register
    class MyStrategy(Strategy):
        name = "my_strategy"
        description = "Buy on Mondays."
        params = {"quantity": Param(Decimal, Decimal(1), min=Decimal(0), min_exclusive=True)}

        def on_bar(self, ctx: StrategyContext, bar: Bar) -> None:
            if bar.ts.weekday() == 0 and not ctx.open_orders(bar.symbol):
                ctx.buy(bar.symbol, self.p.quantity)

The built-in strategies live in `trading.builtin_strategies`, imported (and so
registered) at the end of this module.
"""

from __future__ import annotations

import builtins
import math
import numbers
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any, ClassVar, NoReturn, Protocol, TypeVar, runtime_checkable

from trading.errors import Invalid
from trading.instruments import Bar, validate_symbol
from trading.orders import Fill
from trading.values import to_decimal

PARAM_TYPES: tuple[type, ...] = (int, float, Decimal, bool, str)
_TYPE_NAMES: dict[type, str] = {int: "int", float: "float", Decimal: "decimal", bool: "bool", str: "str"}
_TYPE_PHRASES: dict[type, str] = {int: "an integer", float: "a number", Decimal: "a number",
                                  bool: "true or false", str: "a string"}
_INT_RE = re.compile(r"[+-]?[0-9]+")
NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")


class _Unconvertible(Exception):
    """A value that cannot become a parameter's type."""


def _convert(kind: type, value: Any) -> Any:
    """Convert `value` to `kind` (see `Param.coerce` for the rules) or raise `_Unconvertible`."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise _Unconvertible
    if isinstance(value, bool) or value is None:
        raise _Unconvertible
    if kind is str:
        if isinstance(value, str):
            return value
        raise _Unconvertible
    if kind is int:
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, str) and _INT_RE.fullmatch(value):
            return int(value)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
            return int(value)
        raise _Unconvertible
    if isinstance(value, float):
        value = float(value)  # a numpy float's repr is "np.float64(...)"
    elif not isinstance(value, numbers.Real | Decimal | str):
        raise _Unconvertible
    try:
        number = to_decimal(value, field="value")
    except Invalid:
        raise _Unconvertible from None
    if kind is Decimal:
        return number
    result = float(number)
    if not math.isfinite(result):  # "1e400"
        raise _Unconvertible
    return result


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)


def _jsonable(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else value


@dataclass(frozen=True)
class Param:
    """A declared strategy parameter: its type, default, bounds and allowed values.

    `type` is one of int, float, Decimal, bool or str. `min` and `max` are inclusive
    unless `min_exclusive` is set (for "greater than zero"). `default`, the bounds and the
    choices are converted to `type` when the Param is built; a bad declaration raises
    `TypeError` or `ValueError` (a programming error, not bad input).
    """

    type: builtins.type[Any]
    default: Any
    min: Any = None
    max: Any = None
    choices: tuple[Any, ...] | None = None
    description: str = ""
    min_exclusive: bool = False

    def __post_init__(self) -> None:
        if self.type not in PARAM_TYPES:
            raise TypeError(f"Param type must be one of int, float, Decimal, bool, str, not {self.type!r}")
        if self.type in (bool, str) and (self.min is not None or self.max is not None):
            raise TypeError(f"a {_TYPE_NAMES[self.type]} Param takes no min or max")
        for attr in ("min", "max"):
            if getattr(self, attr) is not None:
                object.__setattr__(self, attr, self._declared(attr, getattr(self, attr)))
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"Param min {self.min} is above max {self.max}")
        if self.choices is not None:
            choices = tuple(self._declared("choice", c) for c in self.choices)
            if not choices:
                raise ValueError("Param choices must not be empty")
            object.__setattr__(self, "choices", choices)
        try:
            object.__setattr__(self, "default", self.coerce("default", self.default))
        except Invalid as exc:
            raise ValueError(f"Param default {self.default!r} is not valid: {exc.message}") from None

    def _declared(self, what: str, value: Any) -> Any:
        try:
            return _convert(self.type, value)
        except _Unconvertible:
            raise TypeError(f"Param {what} {value!r} is not {_TYPE_PHRASES[self.type]}") from None

    def requirement(self) -> str:
        """Return what a valid value is, in words: "an integer between 2 and 500"."""
        if self.choices is not None:
            return "one of " + ", ".join(_show(c) for c in self.choices)
        phrase = _TYPE_PHRASES[self.type]
        low, high = self.min, self.max
        if low is not None and high is not None and not self.min_exclusive:
            return f"{phrase} between {_show(low)} and {_show(high)}"
        bounds = []
        if low is not None:
            bounds.append(f"{'greater than' if self.min_exclusive else 'at least'} {_show(low)}")
        if high is not None:
            bounds.append(f"at most {_show(high)}")
        return " ".join([phrase, " and ".join(bounds)]) if bounds else phrase

    def coerce(self, name: str, value: Any) -> Any:
        """Convert JSON-ish `value` to this parameter's type and check bounds and choices.

        int accepts integers, integral strings ("20") and integral floats (20.0, as a Tune
        `quniform` yields); float accepts finite numbers and numeric strings; Decimal
        accepts what `trading.values.to_decimal` does; bool only real booleans; str only
        strings. Raise `Invalid` with the field ``params.<name>`` otherwise.
        """
        try:
            result = _convert(self.type, value)
        except _Unconvertible:
            self._refuse(name)
        if self.choices is not None and result not in self.choices:
            self._refuse(name)
        if self.min is not None and (result <= self.min if self.min_exclusive else result < self.min):
            self._refuse(name)
        if self.max is not None and result > self.max:
            self._refuse(name)
        return result

    def _refuse(self, name: str) -> NoReturn:
        field = f"params.{name}"
        raise Invalid(f"{field} must be {self.requirement()}", field=field)

    def describe(self) -> dict[str, Any]:
        """Return a JSON-friendly description (Decimals as strings)."""
        return {
            "type": _TYPE_NAMES[self.type],
            "default": _jsonable(self.default),
            "min": _jsonable(self.min),
            "max": _jsonable(self.max),
            "min_exclusive": self.min_exclusive,
            "choices": None if self.choices is None else [_jsonable(c) for c in self.choices],
            "description": self.description,
        }


    @classmethod
    def from_description(cls, described: Mapping[str, Any]) -> Param:
        """Rebuild a Param from its `describe()` output (e.g. a package's, read back from JSON)."""
        kind = _TYPES_BY_NAME.get(described.get("type"))  # type: ignore[arg-type]
        if kind is None:
            raise ValueError(f"unknown parameter type {described.get('type')!r}")
        choices = described.get("choices")
        return cls(kind, described["default"], min=described.get("min"), max=described.get("max"),
                   choices=None if choices is None else tuple(choices),
                   description=str(described.get("description") or ""),
                   min_exclusive=bool(described.get("min_exclusive")))


_TYPES_BY_NAME: dict[str, type] = {name: kind for kind, name in _TYPE_NAMES.items()}


def resolve_params(declared: Mapping[str, Param], given: Mapping[str, Any], strategy: str) -> dict[str, Any]:
    """Coerce `given` against the `declared` parameters and fill defaults; refuse unknown names.

    Raise `Invalid` with the field ``params.<name>``.
    """
    unknown = sorted(set(given) - set(declared))
    if unknown:
        known = ", ".join(declared) or "none"
        raise Invalid(f"unknown parameter {unknown[0]!r} for strategy {strategy} (known: {known})",
                      field=f"params.{unknown[0]}")
    return {key: param.coerce(key, given[key]) if key in given else param.default
            for key, param in declared.items()}


class Params(Mapping[str, Any]):
    """A strategy's coerced parameter values: read-only, by key or by attribute."""

    __slots__ = ("_values",)
    _values: dict[str, Any]

    def __init__(self, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_values", dict(values))

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no parameter {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("strategy parameters are read-only")

    def __reduce__(self) -> tuple[Any, ...]:
        return (Params, (self._values,))

    def __repr__(self) -> str:
        return f"Params({self._values!r})"


@runtime_checkable
class StrategyContext(Protocol):
    """What a strategy may see and do; each engine (backtest, live, Tune, agent) supplies one.

    Quantities are positive; `position` is signed (negative when short). Order methods
    return the client order id. `history(symbol, n)` returns the last `n` bars seen for
    `symbol`, oldest first, ending with the current one (fewer early on).
    """

    @property
    def now(self) -> datetime: ...

    @property
    def cash(self) -> Decimal: ...

    @property
    def equity(self) -> Decimal: ...

    def buy(self, symbol: str, quantity: Decimal, *, type: str = "market",
            limit_price: Decimal | None = None, stop_price: Decimal | None = None,
            time_in_force: str = "gtc") -> str: ...

    def sell(self, symbol: str, quantity: Decimal, *, type: str = "market",
             limit_price: Decimal | None = None, stop_price: Decimal | None = None,
             time_in_force: str = "gtc") -> str: ...

    def cancel(self, client_order_id: str) -> None: ...

    def position(self, symbol: str) -> Decimal: ...

    def last_price(self, symbol: str) -> Decimal | None: ...

    def history(self, symbol: str, n: int) -> Sequence[Bar]: ...

    def open_orders(self, symbol: str | None = None) -> Sequence[str]: ...

    def log(self, message: str) -> None: ...


class Predictions(Protocol):
    """A model's scores, as the engine running a strategy supplies them (see `Strategy.uses_model`).

    `score` is the model's prediction for `symbol` made from the bars up to and including
    the one at `ts` (the probability of a rise for a ``direction`` model, the expected log
    return for a ``return`` one), or None when there is none (too few bars yet, or the
    model could not be asked).
    """

    def score(self, symbol: str, ts: datetime) -> float | None: ...


class Strategy:
    """Base of every strategy: parameter handling and no-op hooks.

    Subclasses set `name` (lower-case snake case), `description` and `params`, override
    the hooks they need and, for checks across parameters, `validate`. Instances keep
    their own state and must stay picklable (they travel to Ray actors).

    A strategy with `uses_model` reads a tenant model's predictions: it declares the
    parameters ``model`` (the model's name) and ``version`` (0: the production version),
    and the engine running it calls `use_predictions` before the first bar (in a backtest,
    scores computed in-process from the bars; in a live bot, scores from the model
    endpoint).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    params: ClassVar[Mapping[str, Param]] = MappingProxyType({})
    uses_model: ClassVar[bool] = False
    predictions: Predictions | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = dict(cls.params)
        for key, param in declared.items():
            if not isinstance(key, str) or not NAME_RE.fullmatch(key) or key == "symbols":
                raise TypeError(f"{cls.__qualname__}: bad parameter name {key!r}")
            if not isinstance(param, Param):
                raise TypeError(f"{cls.__qualname__}: parameter {key!r} must be a Param")
        cls.params = MappingProxyType(declared)

    def __init__(self, symbols: Sequence[str], **params: Any) -> None:
        if isinstance(symbols, str) or not isinstance(symbols, Sequence) or not symbols:
            raise Invalid("symbols must be a non-empty list of symbols", field="symbols")
        checked = tuple(validate_symbol(s, field="symbols") for s in symbols)
        if len(set(checked)) != len(checked):
            raise Invalid("symbols must not repeat", field="symbols")
        values = resolve_params(self.params, params, self.name or type(self).__name__)
        self.symbols: tuple[str, ...] = checked
        self.p = Params(values)
        self.validate()

    def validate(self) -> None:
        """Check the parameters together (e.g. fast < slow); raise `Invalid` naming the field."""

    @property
    def warmup(self) -> int:
        """Return how many bars of history per symbol this strategy reads (engines keep at least that)."""
        return 1

    def use_predictions(self, predictions: Predictions) -> None:
        """Take the model's scores (engines call this for a strategy that `uses_model`)."""
        self.predictions = predictions

    def on_start(self, ctx: StrategyContext) -> None:
        """Run once before the first bar."""

    def on_bar(self, ctx: StrategyContext, bar: Bar) -> None:
        """React to a new bar of one of `self.symbols`."""

    def on_fill(self, ctx: StrategyContext, fill: Fill) -> None:
        """React to a fill of one of this strategy's orders."""

    def on_stop(self, ctx: StrategyContext) -> None:
        """Run once after the last bar."""

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Return a JSON-friendly description for an API listing."""
        return {"name": cls.name, "description": cls.description,
                "params": {key: param.describe() for key, param in cls.params.items()}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(symbols={list(self.symbols)!r}, params={dict(self.p)!r})"


_REGISTRY: dict[str, type[Strategy]] = {}
S = TypeVar("S", bound=Strategy)


def register(cls: type[S]) -> type[S]:
    """Add a Strategy subclass to the registry under its `name` (a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)) or cls is Strategy:
        raise TypeError(f"{cls!r} is not a Strategy subclass")
    if not isinstance(cls.__dict__.get("name"), str) or not NAME_RE.fullmatch(cls.name):
        raise TypeError(f"{cls.__qualname__} must set its own name (lower-case snake case)")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and (existing.__module__, existing.__qualname__) != \
            (cls.__module__, cls.__qualname__):
        raise ValueError(f"strategy name {cls.name!r} is taken by {existing.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def get_strategy(name: Any) -> type[Strategy]:
    """Return the registered strategy class called `name`, or raise `Invalid` listing the known ones."""
    cls = _REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        raise Invalid(f"unknown strategy {name!r}; known: {', '.join(sorted(_REGISTRY))}",
                      field="strategy")
    return cls


def strategies() -> dict[str, type[Strategy]]:
    """Return every registered strategy class by name, sorted by name."""
    return dict(sorted(_REGISTRY.items()))


# Last, so that the built-ins (which subclass Strategy) register whenever this module is imported.
import trading.builtin_strategies  # noqa: E402, F401
