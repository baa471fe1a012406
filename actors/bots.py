"""Bot definitions: a validated `BotSpec`, the stored `Bot`, and `BotStore` over the tenant schema.

No Ray here: the runtime that starts and stops bots reads and writes them through
`BotStore`. Every method is one tenant unit of work (the tenant's role and schema, see
`tenancy.db.Database.tenant`), committed explicitly; anything that raises rolls back.

A bot's definition changes only while it is stopped (or failed): `update` and `delete`
refuse a bot in any other status with `Conflict` code ``bot_running``. Every write bumps
`version`, and `update` takes an optional expected version (optimistic concurrency).
Each bot trades through its own paper account ``bot:<id>``, opened with the bot's capital
in the same transaction that creates the bot.
"""

from __future__ import annotations

import builtins
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from tenancy.db import TenantScoped
from trading.errors import Conflict, Invalid, NotFound
from trading.instruments import validate_symbol
from trading.strategy import NAME_RE, Params, Strategy, get_strategy, resolve_params
from trading.values import to_decimal

MIB = 1024 * 1024
MAX_NAME = 100
MAX_SYMBOLS = 50
MAX_CPUS = 16.0
MIN_MEMORY_MB, MAX_MEMORY_MB = 64, 65_536
DEFAULT_NUM_CPUS, DEFAULT_MEMORY_MB = 0.25, 256

STATUSES = ("stopped", "starting", "running", "stopping", "error")
EDITABLE_STATUSES = frozenset({"stopped", "error"})  # a bot's definition changes only then
SPEC_KEYS = ("name", "strategy", "symbols", "params", "capital", "resources", "package")
UPDATABLE_KEYS = ("name", "params", "symbols", "capital", "resources")
RESOURCE_KEYS = ("num_cpus", "memory_mb", "num_gpus")
MAX_GPUS = 8

_BOT_COLUMNS = ("id, name, strategy, params, symbols, capital, num_cpus, memory_bytes, num_gpus,"
                " status, package,"
                " last_error, created_at, updated_at, version")


def bot_account(bot_id: uuid.UUID) -> str:
    """Return the name of a bot's paper account: ``bot:<id>``."""
    return f"bot:{bot_id}"


@dataclass(frozen=True)
class BotSpec:
    """What defines a bot, validated and normalised when built (`Invalid` names the field).

    `params` holds every parameter of the strategy, defaults included, JSON-friendly
    (Decimals as strings), so a stored bot keeps running with the values it was given; it
    is a read-only, picklable `Params`.
    """

    name: str
    strategy: str
    symbols: tuple[str, ...]
    capital: Decimal
    params: Mapping[str, Any] = field(default_factory=lambda: Params({}), hash=False)
    num_cpus: float = DEFAULT_NUM_CPUS
    memory_mb: int = DEFAULT_MEMORY_MB
    num_gpus: float = 0.0
    package: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "name", _name(self.name))
        set_(self, "symbols", _symbols(self.symbols))
        if self.package is None:
            cls = get_strategy(self.strategy)
            set_(self, "params", Params(_resolved_params(cls, self.symbols, self.params)))
        else:  # the package's code is never run here: its job checks the parameters
            if not isinstance(self.package, str) or not NAME_RE.fullmatch(self.package):
                raise Invalid("package must be the name of an uploaded strategy package", field="package")
            if not isinstance(self.strategy, str) or not NAME_RE.fullmatch(self.strategy):
                raise Invalid("strategy must be the name of one of the package's strategies",
                              field="strategy")
            set_(self, "params", Params(_json_params(self.params)))
        set_(self, "capital", _capital(self.capital))
        set_(self, "num_cpus", _num_cpus(self.num_cpus))
        set_(self, "memory_mb", _memory_mb(self.memory_mb))
        set_(self, "num_gpus", _num_gpus(self.num_gpus))

    @classmethod
    def validate(cls, data: Mapping[str, Any]) -> BotSpec:
        """Build a spec from a JSON-like mapping, refusing unknown keys (and in ``resources``).

        Keys: ``name``, ``strategy``, ``symbols``, ``params`` (optional), ``capital`` and
        ``resources`` (optional: ``num_cpus``, ``memory_mb``, ``num_gpus``).
        """
        if not isinstance(data, Mapping):
            raise Invalid("a bot must be an object", field=None)
        _refuse_unknown(data, SPEC_KEYS, prefix="")
        for key in ("name", "strategy", "symbols", "capital"):
            if key not in data:
                raise Invalid(f"{key} is required", field=key)
        resources = data.get("resources")
        if resources is None:
            resources = {}
        if not isinstance(resources, Mapping):
            raise Invalid("resources must be an object", field="resources")
        _refuse_unknown(resources, RESOURCE_KEYS, prefix="resources.")
        params = data.get("params")
        if params is None:
            params = {}
        return cls(name=data["name"], strategy=data["strategy"], symbols=data["symbols"],
                   params=params, capital=data["capital"],
                   num_cpus=resources.get("num_cpus", DEFAULT_NUM_CPUS),
                   memory_mb=resources.get("memory_mb", DEFAULT_MEMORY_MB),
                   num_gpus=resources.get("num_gpus", 0), package=data.get("package"))

    @property
    def memory_bytes(self) -> int:
        """Return the memory reservation in bytes."""
        return self.memory_mb * MIB

    def to_dict(self) -> dict[str, Any]:
        """Return the spec in the shape `validate` reads (JSON-friendly but for `capital`)."""
        return {"name": self.name, "strategy": self.strategy, "symbols": list(self.symbols),
                "params": dict(self.params), "capital": self.capital,
                "resources": {"num_cpus": self.num_cpus, "memory_mb": self.memory_mb,
                              "num_gpus": self.num_gpus}, "package": self.package}

    def build(self) -> Strategy:
        """Return a fresh instance of a built-in strategy with these symbols and parameters."""
        return get_strategy(self.strategy)(self.symbols, **self.params)


@dataclass(frozen=True)
class Bot:
    """A stored bot: its row in the tenant's ``bots`` table."""

    id: uuid.UUID
    name: str
    strategy: str
    params: Mapping[str, Any] = field(hash=False)
    symbols: tuple[str, ...]
    capital: Decimal
    num_cpus: float
    memory_bytes: int
    num_gpus: float
    status: str
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    version: int
    package: str | None = None  # an uploaded strategy package: the bot runs as a Ray job

    @classmethod
    def from_row(cls, row: Any) -> Bot:
        params = row.params if isinstance(row.params, Mapping) else json.loads(row.params)
        return cls(id=row.id, name=row.name, strategy=row.strategy, params=Params(params),
                   symbols=tuple(row.symbols), capital=row.capital, num_cpus=float(row.num_cpus),
                   memory_bytes=int(row.memory_bytes), num_gpus=float(row.num_gpus),
                   status=row.status, last_error=row.last_error,
                   created_at=row.created_at, updated_at=row.updated_at, version=row.version,
                   package=row.package)

    @property
    def memory_mb(self) -> int:
        """Return the memory reservation in MiB."""
        return self.memory_bytes // MIB

    @property
    def account(self) -> str:
        """Return the bot's paper account name."""
        return bot_account(self.id)

    @property
    def editable(self) -> bool:
        """Tell whether the definition may change now (stopped or failed)."""
        return self.status in EDITABLE_STATUSES

    def spec(self) -> BotSpec:
        """Return the stored definition as a spec (validated again)."""
        return BotSpec(name=self.name, strategy=self.strategy, symbols=self.symbols,
                       params=self.params, capital=self.capital, num_cpus=self.num_cpus,
                       memory_mb=self.memory_mb, num_gpus=self.num_gpus, package=self.package)


class BotStore(TenantScoped):
    """One tenant's bots in its schema."""


    async def create(self, spec: BotSpec) -> Bot:
        """Store a new, stopped bot and open its paper account with the capital as cash.

        A name already taken is a `Conflict` (field ``name``).
        """
        if not isinstance(spec, BotSpec):
            raise Invalid("spec must be a BotSpec", field=None)
        async with self._uow() as uow:
            if spec.package is not None:
                spec = replace(spec, params=Params(await _package_params(uow.conn, spec)))
            row = (await uow.conn.execute(text(
                f"INSERT INTO bots (id, name, strategy, params, symbols, capital, num_cpus,"
                f" memory_bytes, num_gpus, package) VALUES (:id, :name, :strategy,"
                f" CAST(:params AS jsonb), :symbols, :capital, :cpus, :mem, :gpus, :package)"
                f" ON CONFLICT (name) DO NOTHING"
                f" RETURNING {_BOT_COLUMNS}"),
                {"id": uuid.uuid4(), **_spec_values(spec)})).first()
            if row is None:
                raise _name_taken(spec.name)
            bot = Bot.from_row(row)
            await uow.conn.execute(text(
                "INSERT INTO accounts (account, cash) VALUES (:a, :c)"),
                {"a": bot.account, "c": spec.capital})
            await uow.commit()
        return bot

    async def list(self) -> builtins.list[Bot]:
        """Return every bot of the tenant, oldest first."""
        async with self._uow() as uow:
            rows = (await uow.conn.execute(text(
                f"SELECT {_BOT_COLUMNS} FROM bots ORDER BY created_at, id"))).all()
        return [Bot.from_row(r) for r in rows]

    async def get(self, bot_id: uuid.UUID | str) -> Bot:
        """Return one bot; an unknown or malformed id is `NotFound`."""
        key = _bot_id(bot_id)
        async with self._uow() as uow:
            return await _load(uow.conn, key)

    async def update(self, bot_id: uuid.UUID | str, changes: Mapping[str, Any],
                     expected_version: int | None = None) -> Bot:
        """Change name, params, symbols, capital and/or resources of a stopped bot.

        `params` and `resources` are merged over the stored ones; the merged definition is
        validated again. A new capital moves the paper account's cash by the difference.
        Refused with `Conflict` ``bot_running`` unless the bot is stopped or failed, and
        with ``version_conflict`` when `expected_version` is given and stale.
        """
        key = _bot_id(bot_id)
        if not isinstance(changes, Mapping):
            raise Invalid("changes must be an object", field=None)
        for name, value in changes.items():
            if name not in UPDATABLE_KEYS:
                what = "cannot be changed" if name in SPEC_KEYS else "is not a bot field"
                raise Invalid(f"{name} {what}", field=str(name))
            if value is None:
                raise Invalid(f"{name} must not be null", field=name)
        async with self._uow() as uow:
            bot = await _load(uow.conn, key, lock=True)
            _check_version(bot, expected_version)
            _check_editable(bot, "changed")
            if not changes:
                return bot
            spec = BotSpec.validate(_merged(bot.spec().to_dict(), changes))
            if spec.package is not None:
                spec = replace(spec, params=Params(await _package_params(uow.conn, spec)))
            try:
                row = (await uow.conn.execute(text(
                    f"UPDATE bots SET name = :name, strategy = :strategy,"
                    f" params = CAST(:params AS jsonb), symbols = :symbols, capital = :capital,"
                    f" num_cpus = :cpus, memory_bytes = :mem, num_gpus = :gpus, updated_at = now(),"
                    f" version = version + 1 WHERE id = :id RETURNING {_BOT_COLUMNS}"),
                    {"id": key, **_spec_values(spec)})).one()
            except IntegrityError as exc:
                if _is_unique_violation(exc):
                    raise _name_taken(spec.name) from None
                raise
            if spec.capital != bot.capital:
                await uow.conn.execute(text(
                    "UPDATE accounts SET cash = cash + :delta, updated_at = now()"
                    " WHERE account = :a"), {"delta": spec.capital - bot.capital, "a": bot.account})
            await uow.commit()
        return Bot.from_row(row)

    async def delete(self, bot_id: uuid.UUID | str, expected_version: int | None = None) -> Bot:
        """Delete a stopped (or failed) bot and return it as it was.

        Its orders stay, with ``bot_id`` set to NULL; its paper account, fills and
        positions stay too.
        """
        key = _bot_id(bot_id)
        async with self._uow() as uow:
            bot = await _load(uow.conn, key, lock=True)
            _check_version(bot, expected_version)
            _check_editable(bot, "deleted")
            await uow.conn.execute(text("DELETE FROM bots WHERE id = :id"), {"id": key})
            await uow.commit()
        return bot

    async def set_status(self, bot_id: uuid.UUID | str, status: str,
                         last_error: str | None = None) -> Bot:
        """Set the runtime status (and the last error, cleared when None); bump the version."""
        key = _bot_id(bot_id)
        if status not in STATUSES:
            raise Invalid(f"status must be one of {', '.join(STATUSES)}", field="status")
        if last_error is not None and not isinstance(last_error, str):
            raise Invalid("last_error must be a string", field="last_error")
        async with self._uow() as uow:
            row = (await uow.conn.execute(text(
                f"UPDATE bots SET status = :s, last_error = :e, updated_at = now(),"
                f" version = version + 1 WHERE id = :id RETURNING {_BOT_COLUMNS}"),
                {"s": status, "e": last_error, "id": key})).first()
            if row is None:
                raise _not_found(bot_id)
            await uow.commit()
        return Bot.from_row(row)


# --- validation of the spec's fields ------------------------------------------------------

def _refuse_unknown(data: Mapping[Any, Any], known: Sequence[str], *, prefix: str) -> None:
    for key in data:
        if key not in known:
            raise Invalid(f"unknown field {prefix}{key}; known: {', '.join(known)}",
                          field=f"{prefix}{key}")


def _name(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid("name must be a string", field="name")
    name = value.strip()
    if not 1 <= len(name) <= MAX_NAME:
        raise Invalid(f"name must be 1-{MAX_NAME} characters", field="name")
    if any(not ch.isprintable() for ch in name):
        raise Invalid("name must not contain control characters", field="name")
    return name


def _symbols(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise Invalid("symbols must be a list of symbols", field="symbols")
    if not 1 <= len(value) <= MAX_SYMBOLS:
        raise Invalid(f"symbols must list 1-{MAX_SYMBOLS} symbols", field="symbols")
    checked = tuple(validate_symbol(s, field="symbols") for s in value)
    if len(set(checked)) != len(checked):
        raise Invalid("symbols must not repeat", field="symbols")
    return checked


async def _package_params(conn: AsyncConnection, spec: BotSpec) -> dict[str, Any]:
    """A package bot's parameters checked against what its strategy declares (defaults filled).

    Refuse a package that is not uploaded, or that does not declare the strategy.
    """
    from actors.research import declared_params  # the package store lives with the research runs

    found = (await conn.execute(text("SELECT name, strategies FROM strategy_packages WHERE name = :n"),
                                {"n": spec.package})).first()
    if found is None:
        raise Invalid(f"no strategy package {spec.package!r}: upload it first (PUT /v1/strategy-packages/"
                      f"{spec.package})", field="package")
    package = {"name": found.name, "strategies": found.strategies if isinstance(found.strategies, list)
               else json.loads(found.strategies)}
    values = resolve_params(declared_params(package, spec.strategy), spec.params, spec.strategy)
    return {key: str(v) if isinstance(v, Decimal) else v for key, v in values.items()}


def _json_params(value: Any) -> dict[str, Any]:
    """A package strategy's parameters as given: an object of JSON values, names checked."""
    if not isinstance(value, Mapping):
        raise Invalid("params must be an object", field="params")
    for key, item in value.items():
        if not isinstance(key, str) or not NAME_RE.fullmatch(key):
            raise Invalid(f"{key!r} is not a parameter name", field=f"params.{key}")
        try:
            json.dumps(item, allow_nan=False)
        except (TypeError, ValueError):
            raise Invalid(f"params.{key} must be a JSON value", field=f"params.{key}") from None
    return dict(value)


def _resolved_params(cls: type[Strategy], symbols: tuple[str, ...], value: Any) -> dict[str, Any]:
    """Instantiate the strategy once (its own checks) and return every parameter's value."""
    if not isinstance(value, Mapping):
        raise Invalid("params must be an object", field="params")
    for key in value:
        if not isinstance(key, str) or key not in cls.params:
            known = ", ".join(cls.params) or "none"
            raise Invalid(f"unknown parameter {key!r} for strategy {cls.name} (known: {known})",
                          field=f"params.{key}")
    instance = cls(symbols, **value)
    return {key: str(v) if isinstance(v, Decimal) else v for key, v in instance.p.items()}


def _capital(value: Any) -> Decimal:
    capital = to_decimal(value, field="capital")  # refuses booleans, NaN and infinities
    if capital <= 0:
        raise Invalid("capital must be positive", field="capital")
    return capital


def _num_cpus(value: Any) -> float:
    field_ = "resources.num_cpus"
    number = float(to_decimal(value, field=field_))
    if not math.isfinite(number) or not 0 < number <= MAX_CPUS:
        raise Invalid(f"{field_} must be above 0 and at most {MAX_CPUS:g}", field=field_)
    return number


def _num_gpus(value: Any) -> float:
    field_ = "resources.num_gpus"
    number = float(to_decimal(value, field=field_))
    if not math.isfinite(number) or not 0 <= number <= MAX_GPUS:
        raise Invalid(f"{field_} must be between 0 and {MAX_GPUS}", field=field_)
    return number


def _memory_mb(value: Any) -> int:
    field_ = "resources.memory_mb"
    number = to_decimal(value, field=field_)
    if number != number.to_integral_value():
        raise Invalid(f"{field_} must be a whole number", field=field_)
    if not MIN_MEMORY_MB <= number <= MAX_MEMORY_MB:
        raise Invalid(f"{field_} must be between {MIN_MEMORY_MB} and {MAX_MEMORY_MB}", field=field_)
    return int(number)


def _merged(current: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Return `current` with `changes` applied; objects in both (params, resources) merge."""
    merged = dict(current)
    for key, value in changes.items():
        if key in ("params", "resources") and isinstance(value, Mapping):
            merged[key] = {**current[key], **value}
        else:
            merged[key] = value
    return merged


# --- storage helpers ----------------------------------------------------------------------

def _spec_values(spec: BotSpec) -> dict[str, Any]:
    return {"name": spec.name, "strategy": spec.strategy, "params": json.dumps(dict(spec.params)),
            "symbols": list(spec.symbols), "capital": spec.capital,
            "cpus": Decimal(repr(spec.num_cpus)), "mem": spec.memory_bytes,
            "gpus": Decimal(repr(spec.num_gpus)), "package": spec.package}


def _bot_id(value: Any) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise _not_found(value) from None


def _not_found(bot_id: Any) -> NotFound:
    return NotFound(f"no bot {str(bot_id)[:64]!r}", field="bot_id")


def _name_taken(name: str) -> Conflict:
    return Conflict(f"a bot named {name!r} already exists", code="bot_name_taken", field="name")


async def _load(conn: AsyncConnection, bot_id: uuid.UUID, *, lock: bool = False) -> Bot:
    row = (await conn.execute(text(
        f"SELECT {_BOT_COLUMNS} FROM bots WHERE id = :id{' FOR UPDATE' if lock else ''}"),
        {"id": bot_id})).first()
    if row is None:
        raise _not_found(bot_id)
    return Bot.from_row(row)


def _check_version(bot: Bot, expected: int | None) -> None:
    if expected is not None and expected != bot.version:
        raise Conflict(f"bot {bot.name!r} changed (version {bot.version}, expected {expected})",
                       code="version_conflict", field="version")


def _check_editable(bot: Bot, what: str) -> None:
    if not bot.editable:
        raise Conflict(f"bot {bot.name!r} is {bot.status}: stop it before it is {what}",
                       code="bot_running", field="status")


def _is_unique_violation(exc: IntegrityError) -> bool:
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code == "23505"
