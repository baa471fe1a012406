"""The agent's configuration file (YAML) and a bot's configuration.

    name: my-laptop            # shown on the platform (default: the host name)
    seed: 7                    # the synthetic market's seed
    interval_seconds: 60       # market time per bar
    speed: 1.0                 # bars per second of wall-clock time
    start: 2024-01-01T00:00:00Z  # where a new database's market clock starts (default: now)
    fee_bps: 1                 # paper broker fee
    slippage_bps: 0            # paper broker slippage
    heartbeat_seconds: 10      # until the server's welcome says otherwise
    backoff: {initial: 0.5, maximum: 30, reset_after: 30}
    bots:
      - name: sma-btc
        strategy: sma_crossover
        symbols: [BTC-USD]
        params: {fast: 5, slow: 20, quantity: "0.01"}
        capital: 10000
        status: running        # optional: applied at every start; omitted, a new bot runs
                               # and a known bot keeps the status its commands left

Every error is an `Invalid` naming the field at fault (``bots[0].params.fast``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from trading.errors import Invalid
from trading.strategy import get_strategy
from trading.values import ZERO, to_decimal

BOT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
STATUSES = ("running", "stopped")
DEFAULT_CAPITAL = Decimal(10_000)


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value <= 0:
        raise Invalid(f"{name} must be a positive number", field=name)
    return float(value)


@dataclass(frozen=True)
class BotConfig:
    """A local bot: which strategy trades which symbols with what parameters and capital."""

    name: str
    strategy: str
    symbols: tuple[str, ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    capital: Decimal = DEFAULT_CAPITAL

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not BOT_NAME_RE.fullmatch(self.name):
            raise Invalid("name must be 1-32 characters: letters, digits, _ and -, starting with a "
                          "letter or digit", field="name")
        if isinstance(self.symbols, str) or not isinstance(self.symbols, Sequence):
            raise Invalid("symbols must be a list of symbols", field="symbols")
        object.__setattr__(self, "symbols", tuple(self.symbols))
        if not isinstance(self.params, Mapping):
            raise Invalid("params must be a mapping", field="params")
        object.__setattr__(self, "params", dict(self.params))
        capital = to_decimal(self.capital, field="capital")
        if capital <= ZERO:
            raise Invalid("capital must be positive", field="capital")
        object.__setattr__(self, "capital", capital)
        if not isinstance(self.strategy, str) or not self.strategy:
            raise Invalid("strategy must name a strategy", field="strategy")

    def validate(self) -> None:
        """Check that the strategy exists and takes these symbols and parameters (raise `Invalid`).

        Not done when a stored bot is read back, so that one whose strategy this process
        does not know can still be listed (and stopped).
        """
        cls = get_strategy(self.strategy)
        if cls.uses_model:
            raise Invalid(f"strategy {cls.name} trades on a model of the platform, which the agent cannot "
                          "reach offline; run it as a bot of the platform", field="strategy")
        cls(self.symbols, **self.params)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly view."""
        return {"name": self.name, "strategy": self.strategy, "symbols": list(self.symbols),
                "params": {k: str(v) if isinstance(v, Decimal) else v for k, v in self.params.items()},
                "capital": str(self.capital)}


@dataclass(frozen=True)
class BackoffConfig:
    """Reconnect delays: full jitter under ``initial * 2**attempt``, capped at `maximum`."""

    initial: float = 0.5
    maximum: float = 30.0
    reset_after: float = 30.0  # a connection open this long resets the delay

    def __post_init__(self) -> None:
        for name in ("initial", "maximum", "reset_after"):
            _positive(getattr(self, name), f"backoff.{name}")
        if self.initial > self.maximum:
            raise Invalid("backoff.initial must not exceed backoff.maximum", field="backoff.initial")


@dataclass(frozen=True)
class AgentConfig:
    """Everything `atp-agent run` reads from its configuration file."""

    name: str | None = None
    seed: int = 0
    interval: timedelta = timedelta(minutes=1)
    speed: float = 1.0
    start: datetime | None = None
    fee_bps: Decimal = ZERO
    slippage_bps: Decimal = ZERO
    heartbeat_seconds: float = 10.0
    backoff: BackoffConfig = field(default_factory=BackoffConfig)
    bots: tuple[tuple[BotConfig, str | None], ...] = ()  # each bot with the status asked for, if any


def _prefixed(exc: Invalid, prefix: str) -> Invalid:
    where = f"{prefix}.{exc.field}" if exc.field else prefix
    message = exc.message if exc.message.startswith(where) else f"{where}: {exc.message}"
    return Invalid(message, field=where)


def parse_bot(raw: Any, where: str) -> tuple[BotConfig, str | None]:
    """Return the bot described by `raw` (a mapping) and the status it asks for, if any."""
    if not isinstance(raw, Mapping):
        raise Invalid(f"{where} must be a mapping", field=where)
    unknown = sorted(set(raw) - {"name", "strategy", "symbols", "params", "capital", "status"})
    if unknown:
        raise Invalid(f"{where}: unknown key {unknown[0]!r}", field=f"{where}.{unknown[0]}")
    for key in ("name", "strategy", "symbols"):
        if key not in raw:
            raise Invalid(f"{where}.{key} is required", field=f"{where}.{key}")
    status = raw.get("status")
    if status is not None and status not in STATUSES:
        raise Invalid(f"{where}.status must be running or stopped", field=f"{where}.status")
    try:
        bot = BotConfig(name=raw["name"], strategy=raw["strategy"], symbols=raw["symbols"],
                        params=raw.get("params") or {}, capital=raw.get("capital", DEFAULT_CAPITAL))
        bot.validate()
    except Invalid as exc:
        raise _prefixed(exc, where) from None
    return bot, status


def parse_config(raw: Any) -> AgentConfig:
    """Validate a parsed configuration document (a mapping; None means empty)."""
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise Invalid("the configuration must be a mapping", field="config")
    known = {"name", "seed", "interval_seconds", "speed", "start", "fee_bps", "slippage_bps",
             "heartbeat_seconds", "backoff", "bots"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise Invalid(f"unknown key {unknown[0]!r}", field=unknown[0])
    name = raw.get("name")
    if name is not None and (not isinstance(name, str) or not 1 <= len(name) <= 100):
        raise Invalid("name must be 1-100 characters", field="name")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise Invalid("seed must be a non-negative integer", field="seed")
    interval = raw.get("interval_seconds", 60)
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise Invalid("interval_seconds must be a whole number of seconds, at least 1",
                      field="interval_seconds")
    start = raw.get("start")
    if start is not None:
        start = _datetime(start, "start")
    backoff_raw = raw.get("backoff") or {}
    if not isinstance(backoff_raw, Mapping) or set(backoff_raw) - {"initial", "maximum", "reset_after"}:
        raise Invalid("backoff takes initial, maximum and reset_after", field="backoff")
    bots_raw = raw.get("bots") or []
    if not isinstance(bots_raw, list):
        raise Invalid("bots must be a list", field="bots")
    bots = tuple(parse_bot(b, f"bots[{i}]") for i, b in enumerate(bots_raw))
    names = [b.name for b, _ in bots]
    if len(set(names)) != len(names):
        raise Invalid("bot names must not repeat", field="bots")
    fees = {k: to_decimal(raw.get(k, 0), field=k) for k in ("fee_bps", "slippage_bps")}
    for key, value in fees.items():
        if value < 0:
            raise Invalid(f"{key} must not be negative", field=key)
    return AgentConfig(
        name=name, seed=seed, interval=timedelta(seconds=interval),
        speed=_positive(raw.get("speed", 1.0), "speed"), start=start,
        fee_bps=fees["fee_bps"], slippage_bps=fees["slippage_bps"],
        heartbeat_seconds=_positive(raw.get("heartbeat_seconds", 10.0), "heartbeat_seconds"),
        backoff=BackoffConfig(**backoff_raw), bots=bots)


def _datetime(value: Any, name: str) -> datetime:
    if isinstance(value, date) and not isinstance(value, datetime):  # YAML reads 2024-01-01 as a date
        value = datetime(value.year, value.month, value.day)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise Invalid(f"{name} must be an ISO-8601 time", field=name) from None
    if not isinstance(value, datetime):
        raise Invalid(f"{name} must be an ISO-8601 time", field=name)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate a YAML configuration file."""
    import yaml  # only `run --config` needs it

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise Invalid(f"cannot read {path}: {exc.strerror}", field="config") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise Invalid(f"{path} is not valid YAML: {exc}", field="config") from None
    return parse_config(raw)
