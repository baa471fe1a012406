"""Backtests, optimisations and strategy packages of a tenant: requests and their store.

`parse_backtest` and `parse_optimization` validate a request completely before anything
is written or submitted: a built-in strategy's parameters and search space are checked
against its declared `Param`s here (422 naming the field); a package's strategy must be
one the package declares, and its parameters are checked by the job that imports it.

`ResearchStore` keeps everything in the tenant schema (tenant units of work): uploaded
packages, jobs, and their backtests and optimisations. `ResearchStore.launch` writes the
job and its target and submits the Ray job in one transaction, under a per-tenant lock,
so two requests cannot both pass admission and a failed submission leaves no row.
Results arrive as events from the job (`apply_event`), each applied in one transaction.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tenancy.db import TenantScoped
from trading.errors import Conflict, Invalid, NotFound
from trading.instruments import validate_symbol
from trading.packages import PackageInfo
from trading.research import OBJECTIVES, SearchSpace, split_at
from trading.strategy import NAME_RE, Param, get_strategy, resolve_params, strategies
from trading.values import money, non_negative

MIB = 1024 * 1024
INTERVALS = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "4h": 14_400, "1d": 86_400}
MAX_SYMBOLS = 20
MAX_BARS = 2_000_000  # synthetic bars of one request (all symbols)
MAX_MARKET_DAYS = 3660
MAX_TRIALS = 1000
DEFAULT_BACKTEST_CPUS, DEFAULT_DRIVER_CPUS = 0.5, 0.25
DEFAULT_MEMORY_MB, DEFAULT_TRIAL_MEMORY_MB = 1024, 512
MIN_MEMORY_MB, MAX_MEMORY_MB = 128, 65_536
FINISHED = ("succeeded", "failed", "stopped")
_TARGET = {"backtest": "backtests", "optimization": "optimizations"}


@dataclass(frozen=True)
class RunSpec:
    """What every run needs: the strategy, data, money model and the driver's resources."""

    strategy: str
    package: str | None
    params: dict[str, Any]
    symbols: tuple[str, ...]
    start: datetime
    end: datetime
    data: dict[str, Any]
    capital: Decimal
    fee_bps: Decimal
    slippage_bps: Decimal
    num_cpus: float
    memory_bytes: int

    def config(self) -> dict[str, Any]:
        """The part of the job's ``atp_job.json`` this spec supplies."""
        return {"strategy": self.strategy, "params": self.params, "symbols": list(self.symbols),
                "from": self.start.isoformat(), "to": self.end.isoformat(), "data": self.data,
                "capital": str(self.capital), "fee_bps": str(self.fee_bps),
                "slippage_bps": str(self.slippage_bps)}


@dataclass(frozen=True)
class OptimizationSpec:
    run: RunSpec
    search_space: dict[str, Any]
    objective: str
    max_drawdown: float | None
    split: datetime
    num_trials: int
    concurrency: int
    cpus_per_trial: float
    memory_per_trial: int
    seed: int

    @property
    def total_cpus(self) -> float:
        return self.run.num_cpus + self.concurrency * self.cpus_per_trial

    @property
    def total_memory(self) -> int:
        return self.run.memory_bytes + self.concurrency * self.memory_per_trial

    def config(self) -> dict[str, Any]:
        return {**self.run.config(), "fixed_params": self.run.params, "search_space": self.search_space,
                "objective": self.objective, "max_drawdown": self.max_drawdown,
                "split_at": self.split.isoformat(), "num_trials": self.num_trials,
                "concurrency": self.concurrency, "cpus_per_trial": self.cpus_per_trial,
                "memory_per_trial": self.memory_per_trial, "seed": self.seed}


def _time(value: Any, field: str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise Invalid(f"{field} must be an ISO-8601 time", field=field) from None
    if not isinstance(value, datetime):
        raise Invalid(f"{field} must be an ISO-8601 time", field=field)
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


def _number(value: Any, field: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise Invalid(f"{field} must be a number between {low:g} and {high:g}", field=field)
    return float(value)


def _integer(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Invalid(f"{field} must be an integer between {low} and {high}", field=field)
    return value


def _object(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise Invalid(f"{field} must be an object", field=field)
    return value


def _refuse_unknown(data: Mapping[str, Any], allowed: Sequence[str], prefix: str = "") -> None:
    for key in data:
        if key not in allowed:
            raise Invalid(f"unknown field {prefix}{key}", field=f"{prefix}{key}")


def _data(value: Any, symbols: Sequence[str], start: datetime, end: datetime) -> dict[str, Any]:
    data = _object(value, "data") or {"source": "synthetic"}
    source = data.get("source")
    if source == "market":
        _refuse_unknown(data, ("source",), "data.")
        if end - start > timedelta(days=MAX_MARKET_DAYS):
            raise Invalid(f"a backtest on market data spans at most {MAX_MARKET_DAYS} days", field="to")
        return {"source": "market"}
    if source != "synthetic":
        raise Invalid("data.source must be synthetic or market", field="data.source")
    _refuse_unknown(data, ("source", "seed", "interval"), "data.")
    seed = _integer(data.get("seed", 7), "data.seed", 0, 2**31 - 1)
    interval = data.get("interval", "1m")
    if interval not in INTERVALS:
        raise Invalid(f"data.interval must be one of {', '.join(INTERVALS)}", field="data.interval")
    seconds = INTERVALS[interval]
    bars = int((end - start).total_seconds() // seconds) * len(symbols)
    if bars > MAX_BARS:
        raise Invalid(f"that is {bars:,} bars; a request may cover at most {MAX_BARS:,} (shorten the "
                      "period, use fewer symbols or a longer interval)", field="to")
    if bars < 2 * len(symbols):
        raise Invalid("the period holds fewer than two bars", field="to")
    return {"source": "synthetic", "seed": seed, "interval": interval, "interval_seconds": seconds}


RUN_KEYS = ("strategy", "package", "params", "symbols", "from", "to", "data", "capital", "fee_bps",
            "slippage_bps", "resources")


def parse_run(body: Mapping[str, Any], package: Mapping[str, Any] | None, *,
              default_cpus: float, extra: Sequence[str] = (), strategy: str | None = None) -> RunSpec:
    """Validate the fields every run has; `package` is the stored package named by the body.

    A given `strategy` replaces the body's (a training run names its model there; no params).
    """
    if not isinstance(body, Mapping):
        raise Invalid("the request must be an object", field=None)
    _refuse_unknown(body, (*RUN_KEYS, *extra))
    for key in ("symbols", "from", "to") if strategy else ("strategy", "symbols", "from", "to"):
        if key not in body:
            raise Invalid(f"{key} is required", field=key)
    symbols = body["symbols"]
    if isinstance(symbols, str) or not isinstance(symbols, list) or not 1 <= len(symbols) <= MAX_SYMBOLS:
        raise Invalid(f"symbols must be a list of 1 to {MAX_SYMBOLS} symbols", field="symbols")
    checked = tuple(sorted(validate_symbol(s, field="symbols") for s in symbols))
    if len(set(checked)) != len(checked):
        raise Invalid("symbols must not repeat", field="symbols")
    start, end = _time(body["from"], "from"), _time(body["to"], "to")
    if end <= start:
        raise Invalid("to must be after from", field="to")
    params = dict(_object(body.get("params"), "params"))
    if strategy is not None:
        params = {}
    elif package is None:
        strategy = body["strategy"]
        cls = get_strategy(strategy)
        params = {k: str(v) if isinstance(v, Decimal) else v
                  for k, v in cls(list(checked), **params).p.items()}
    else:
        strategy = body["strategy"]
        declared = declared_params(package, strategy)
        params = _plain_params(resolve_params(declared, params, strategy))
    resources = _object(body.get("resources"), "resources")
    _refuse_unknown(resources, ("num_cpus", "memory_mb"), "resources.")
    capital = money(body.get("capital", "100000"), field="capital")
    if capital <= 0:
        raise Invalid("capital must be positive", field="capital")
    return RunSpec(
        strategy=strategy, package=None if package is None else package["name"], params=params,
        symbols=checked, start=start, end=end, data=_data(body.get("data"), checked, start, end),
        capital=capital, fee_bps=non_negative(body.get("fee_bps", 0), field="fee_bps"),
        slippage_bps=non_negative(body.get("slippage_bps", 0), field="slippage_bps"),
        num_cpus=_number(resources.get("num_cpus", default_cpus), "resources.num_cpus", 0.05, 64),
        memory_bytes=int(_number(resources.get("memory_mb", DEFAULT_MEMORY_MB), "resources.memory_mb",
                                 MIN_MEMORY_MB, MAX_MEMORY_MB)) * MIB)


def parse_backtest(body: Mapping[str, Any], package: Mapping[str, Any] | None) -> RunSpec:
    return parse_run(body, package, default_cpus=DEFAULT_BACKTEST_CPUS)


OPTIMIZATION_KEYS = ("search_space", "objective", "max_drawdown", "in_sample", "num_trials",
                     "concurrency", "cpus_per_trial", "memory_per_trial_mb", "seed")


def parse_optimization(body: Mapping[str, Any], package: Mapping[str, Any] | None) -> OptimizationSpec:
    run = parse_run(body, package, default_cpus=DEFAULT_DRIVER_CPUS, extra=OPTIMIZATION_KEYS)
    space = body.get("search_space")
    declared = (get_strategy(run.strategy).params if package is None
                else declared_params(package, run.strategy))
    search = SearchSpace.parse(space, declared, fixed=body.get("params"))
    fixed = {k: v for k, v in run.params.items() if k not in search.as_dict()}
    run = RunSpec(**{**run.__dict__, "params": fixed})
    space_json = search.as_dict()
    objective = body.get("objective", "sharpe")
    if objective not in OBJECTIVES:
        raise Invalid(f"objective must be one of {', '.join(OBJECTIVES)}", field="objective")
    cap = body.get("max_drawdown")
    max_drawdown = None if cap is None else _number(cap, "max_drawdown", 0.001, 1)
    in_sample = body.get("in_sample", 0.7)
    return OptimizationSpec(
        run=run, search_space=space_json, objective=objective, max_drawdown=max_drawdown,
        split=split_at(run.start, run.end, in_sample),
        num_trials=_integer(body.get("num_trials", 20), "num_trials", 1, MAX_TRIALS),
        concurrency=_integer(body.get("concurrency", 1), "concurrency", 1, 64),
        cpus_per_trial=_number(body.get("cpus_per_trial", 0.5), "cpus_per_trial", 0.05, 16),
        memory_per_trial=int(_number(body.get("memory_per_trial_mb", DEFAULT_TRIAL_MEMORY_MB),
                                     "memory_per_trial_mb", MIN_MEMORY_MB, MAX_MEMORY_MB)) * MIB,
        seed=_integer(body.get("seed", 0), "seed", 0, 2**31 - 1))


def check_names(info: PackageInfo) -> None:
    """Refuse a package whose strategy takes a built-in strategy's name."""
    clash = sorted({s.name for s in info.strategies} & set(strategies()))
    if clash:
        raise Invalid(f"strategy name {clash[0]!r} is a built-in strategy's; choose another name",
                      field="file")


def declared_params(package: Mapping[str, Any], strategy: str) -> dict[str, Param]:
    """The parameters a package's strategy declares, as its inspect job described them."""
    for found in package["strategies"]:
        if found["name"] == strategy:
            return {k: Param.from_description(v) for k, v in (found.get("params") or {}).items()}
    names = ", ".join(s["name"] for s in package["strategies"])
    raise Invalid(f"package {package['name']!r} defines {names}, not {strategy!r}", field="strategy")


def _plain_params(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Decimal) else v for k, v in values.items()}


def _job_lock_key(tenant_id: uuid.UUID) -> int:
    digest = hashlib.sha256(b"atp-jobs:" + tenant_id.bytes).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _uuid(value: Any, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise NotFound(f"no {what} {value!r}", code=f"{what}_not_found") from None


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


Submit = Callable[[uuid.UUID], Awaitable[str]]
EventHook = Callable[[AsyncConnection, str, Mapping[str, Any]], Awaitable[None]]


class ResearchStore(TenantScoped):
    """One tenant's packages, jobs, backtests and optimisations (its schema)."""

    # -- packages ------------------------------------------------------------------------

    async def put_package(self, name: str, filename: str, info: PackageInfo, actor: str,
                          described: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Store (or replace) the package `name` with its strategies as its inspect job
        `described` them (module, class, name, description, declared parameters)."""
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise Invalid("a package name is lower-case snake case (letters, digits, underscores)",
                          field="name")
        check_names(info)
        content = _pack(info)
        async with self._uow() as uow:
            row = (await uow.conn.execute(text(
                "INSERT INTO strategy_packages (id, name, filename, kind, sha256, size_bytes, content,"
                " strategies, created_by) VALUES (:id, :name, :filename, :kind, :sha, :size, :content,"
                " CAST(:strategies AS jsonb), :actor) ON CONFLICT (name) DO UPDATE SET"
                " filename = EXCLUDED.filename, kind = EXCLUDED.kind, sha256 = EXCLUDED.sha256,"
                " size_bytes = EXCLUDED.size_bytes, content = EXCLUDED.content,"
                " strategies = EXCLUDED.strategies, updated_at = now()"
                f" RETURNING {_PACKAGE_COLUMNS}"),
                {"id": uuid.uuid4(), "name": name, "filename": filename[:200], "kind": info.kind,
                 "sha": info.sha256, "size": len(content), "content": content,
                 "strategies": json.dumps(list(described)), "actor": actor})).one()
            await uow.commit()
        return _package(row)

    async def list_packages(self) -> builtins.list[dict[str, Any]]:
        async with self._uow() as uow:
            rows = (await uow.conn.execute(text(
                f"SELECT {_PACKAGE_COLUMNS} FROM strategy_packages ORDER BY name"))).all()
        return [_package(r) for r in rows]

    async def package(self, name: str, *, content: bool = False) -> dict[str, Any]:
        """One package by name (with its files when `content`); unknown is `NotFound`."""
        async with self._uow() as uow:
            row = (await uow.conn.execute(text(
                f"SELECT {_PACKAGE_COLUMNS}{', content' if content else ''} FROM strategy_packages"
                " WHERE name = :n"), {"n": name})).first()
        if row is None:
            raise NotFound(f"no strategy package {name!r}", code="package_not_found", field="package")
        out = _package(row)
        if content:
            out["files"] = _unpack(bytes(row.content))
        return out

    # -- launching -----------------------------------------------------------------------

    async def launch(self, kind: str, spec: RunSpec | OptimizationSpec, package: Mapping[str, Any] | None,
                     actor: str, admit: Callable[[], Awaitable[None]], submit: Submit) -> uuid.UUID:
        """Write the job and its target and submit it, in one transaction (see the module docstring).

        `admit` raises when the job does not fit the plan; `submit(job_id)` submits it to Ray
        and returns the submission id. Return the target's id (the backtest or optimisation).
        """
        run = spec if isinstance(spec, RunSpec) else spec.run
        cpus = run.num_cpus if isinstance(spec, RunSpec) else spec.total_cpus
        memory = run.memory_bytes if isinstance(spec, RunSpec) else spec.total_memory
        target_id = uuid.uuid4()

        async def write_target(conn: AsyncConnection, job_id: uuid.UUID) -> None:
            common = {"id": target_id, "job": job_id, "strategy": run.strategy,
                      "symbols": list(run.symbols), "start": run.start, "end": run.end,
                      "data": json.dumps(run.data), "capital": run.capital, "fee": run.fee_bps,
                      "slip": run.slippage_bps}
            if isinstance(spec, RunSpec):
                await conn.execute(text(
                    "INSERT INTO backtests (id, job_id, strategy, params, symbols, start_at, end_at, data,"
                    " capital, fee_bps, slippage_bps, status) VALUES (:id, :job, :strategy,"
                    " CAST(:params AS jsonb), :symbols, :start, :end, CAST(:data AS jsonb), :capital, :fee,"
                    " :slip, 'queued')"), {**common, "params": json.dumps(run.params)})
            else:
                await conn.execute(text(
                    "INSERT INTO optimizations (id, job_id, strategy, search_space, fixed_params,"
                    " objective, max_drawdown, symbols, start_at, split_at, end_at, data, capital,"
                    " fee_bps, slippage_bps, num_trials, concurrency, cpus_per_trial, status) VALUES"
                    " (:id, :job, :strategy, CAST(:space AS jsonb), CAST(:fixed AS jsonb), :objective,"
                    " :cap, :symbols, :start, :split, :end, CAST(:data AS jsonb), :capital, :fee, :slip,"
                    " :trials, :concurrency, :cpt, 'queued')"),
                    {**common, "space": json.dumps(spec.search_space), "fixed": json.dumps(run.params),
                     "objective": spec.objective, "cap": spec.max_drawdown, "split": spec.split,
                     "trials": spec.num_trials, "concurrency": spec.concurrency,
                     "cpt": spec.cpus_per_trial})

        await self.launch_job(kind, cpus=cpus, memory=memory, package=package, actor=actor, admit=admit,
                              submit=submit, write_target=write_target)
        return target_id

    async def launch_job(self, kind: str, *, cpus: float, memory: int, package: Mapping[str, Any] | None,
                         actor: str, admit: Callable[[], Awaitable[None]], submit: Submit,
                         write_target: Callable[[AsyncConnection, uuid.UUID], Awaitable[None]] | None = None,
                         bot_id: uuid.UUID | None = None) -> uuid.UUID:
        """Admit, write and submit one job under the tenant's job lock; return the job's id."""
        job_id = uuid.uuid4()
        async with self._uow() as uow:
            await uow.conn.execute(text("SELECT pg_advisory_xact_lock(:k)"),
                                   {"k": _job_lock_key(self._tenant_id)})
            await admit()
            await uow.conn.execute(text(
                "INSERT INTO jobs (id, submission_id, kind, bot_id, package_id, package_sha256, status,"
                " num_cpus, memory_bytes, created_by) VALUES (:id, :sid, :kind, :bot, :pid, :sha, 'queued',"
                " :cpus, :mem, :actor)"),
                {"id": job_id, "sid": f"atp-{job_id}", "kind": kind, "bot": bot_id,
                 "pid": None if package is None else package["id"],
                 "sha": None if package is None else package["sha256"], "cpus": cpus, "mem": memory,
                 "actor": actor})
            if write_target is not None:
                await write_target(uow.conn, job_id)
            await submit(job_id)
            await uow.commit()
        return job_id

    # -- events from the job ---------------------------------------------------------------

    async def apply_event(self, job_id: uuid.UUID, event: Mapping[str, Any],
                          also: EventHook | None = None) -> tuple[str, uuid.UUID | None]:
        """Apply one event of job `job_id` (validated by the route) in one transaction.

        `also(conn, job kind, event)` runs in that transaction too (what a training job
        makes belongs to the model registry). Return the job's kind and bot (a bot job's
        bot is the caller's business).
        """
        async with self._uow() as uow:
            job = (await uow.conn.execute(text(
                "SELECT id, kind, status, bot_id FROM jobs WHERE id = :id FOR UPDATE"),
                {"id": job_id})).first()
            if job is None:
                raise NotFound("no such job", code="job_not_found")
            if job.status in FINISHED:
                raise Conflict(f"the job has already {job.status}", code="job_finished")
            table = _TARGET.get(job.kind)
            kind = event["type"]
            if kind in ("backtest", "optimization") and kind != job.kind:
                raise Invalid(f"a {job.kind} job cannot report a {kind} result", field="type")
            if kind == "started":
                await _set_status(uow.conn, job_id, table, "running")
            elif kind == "progress":
                if job.kind == "backtest":
                    await uow.conn.execute(text(
                        "UPDATE backtests SET progress = :f, bars = :b WHERE job_id = :j"),
                        {"f": event["fraction"], "b": event["bars"], "j": job_id})
            elif kind == "trial":
                await _add_trial(uow.conn, job_id, event)
            elif kind == "backtest":
                await _store_backtest(uow.conn, job_id, event)
                await _set_status(uow.conn, job_id, table, "succeeded")
            elif kind == "optimization":
                await uow.conn.execute(text(
                    "UPDATE optimizations SET best_params = CAST(:b AS jsonb), in_sample = CAST(:i AS jsonb),"
                    " out_of_sample = CAST(:o AS jsonb) WHERE job_id = :j"),
                    {"b": json.dumps(event["best_params"]), "i": json.dumps(event["in_sample"]),
                     "o": json.dumps(event["out_of_sample"]), "j": job_id})
                await _set_status(uow.conn, job_id, table, "succeeded")
            elif kind == "failed":
                await _set_status(uow.conn, job_id, table, "failed", event["message"])
            elif kind == "inspected":
                await uow.conn.execute(text("UPDATE jobs SET result = CAST(:r AS jsonb) WHERE id = :j"),
                                       {"r": json.dumps(event["strategies"]), "j": job_id})
                await _set_status(uow.conn, job_id, table, "succeeded")
            elif kind == "stopped":
                await _set_status(uow.conn, job_id, table, "stopped", event["message"])
            elif kind == "model":
                if job.kind != "train":
                    raise Invalid(f"a {job.kind} job cannot report a model", field="type")
                await _set_status(uow.conn, job_id, table, "succeeded")
            if also is not None:
                await also(uow.conn, job.kind, event)
            await uow.commit()
        return job.kind, job.bot_id

    async def finish(self, job_id: uuid.UUID, status: str, message: str | None) -> None:
        """Mark an unfinished job (and its target) `status` from what Ray says."""
        async with self._uow() as uow:
            job = (await uow.conn.execute(text(
                "SELECT kind, status FROM jobs WHERE id = :id FOR UPDATE"), {"id": job_id})).first()
            if job is not None and job.status not in FINISHED:
                await _set_status(uow.conn, job_id, _TARGET.get(job.kind), status, message)
            await uow.commit()

    # -- reads ---------------------------------------------------------------------------

    async def jobs(self, limit: int = 100) -> builtins.list[dict[str, Any]]:
        async with self._uow() as uow:
            rows = (await uow.conn.execute(text(
                f"SELECT {_JOB_COLUMNS} FROM jobs j LEFT JOIN strategy_packages p ON p.id = j.package_id"
                " ORDER BY j.created_at DESC LIMIT :l"), {"l": limit})).all()
        return [_row(r) for r in rows]

    async def unfinished_jobs(self) -> builtins.list[dict[str, Any]]:
        """The jobs still queued or running, as stored (for admission)."""
        async with self._uow() as uow:
            rows = (await uow.conn.execute(text(
                "SELECT id, submission_id, num_cpus, memory_bytes FROM jobs"
                " WHERE status IN ('queued', 'running')"))).all()
        return [r._asdict() for r in rows]

    async def bot_job(self, bot_id: uuid.UUID) -> dict[str, Any] | None:
        """The latest job of a bot, if it ever ran as one."""
        async with self._uow() as uow:
            row = (await uow.conn.execute(text(
                f"SELECT {_JOB_COLUMNS} FROM jobs j LEFT JOIN strategy_packages p ON p.id = j.package_id"
                " WHERE j.bot_id = :b ORDER BY j.created_at DESC LIMIT 1"), {"b": bot_id})).first()
        return None if row is None else _row(row)

    async def job(self, job_id: Any) -> dict[str, Any]:
        key = _uuid(job_id, "job")
        async with self._uow() as uow:
            row = (await uow.conn.execute(text(
                f"SELECT {_JOB_COLUMNS} FROM jobs j LEFT JOIN strategy_packages p ON p.id = j.package_id"
                " WHERE j.id = :id"), {"id": key})).first()
        if row is None:
            raise NotFound(f"no job {job_id!r}", code="job_not_found")
        return _row(row)

    async def backtests(self, limit: int = 100) -> builtins.list[dict[str, Any]]:
        async with self._uow() as uow:
            rows = (await uow.conn.execute(text(
                f"SELECT {_BACKTEST_SUMMARY} FROM backtests ORDER BY created_at DESC LIMIT :l"),
                {"l": limit})).all()
        return [_row(r) for r in rows]

    async def backtest(self, backtest_id: Any, *, detail: bool = False) -> dict[str, Any]:
        key = _uuid(backtest_id, "backtest")
        columns = _BACKTEST_SUMMARY + (", equity_curve" if detail else "")
        async with self._uow() as uow:
            row = (await uow.conn.execute(text(f"SELECT {columns} FROM backtests WHERE id = :id"),
                                          {"id": key})).first()
            if row is None:
                raise NotFound(f"no backtest {backtest_id!r}", code="backtest_not_found")
            out = _row(row)
            if detail:
                trades = (await uow.conn.execute(text(
                    "SELECT ts, symbol, side, quantity, price, fee, client_order_id FROM backtest_trades"
                    " WHERE backtest_id = :id ORDER BY seq"), {"id": key})).all()
                out["trades"] = [r._asdict() for r in trades]
        return out

    async def optimizations(self, limit: int = 100) -> builtins.list[dict[str, Any]]:
        async with self._uow() as uow:
            rows = (await uow.conn.execute(text(
                f"SELECT {_OPTIMIZATION_COLUMNS} FROM optimizations ORDER BY created_at DESC LIMIT :l"),
                {"l": limit})).all()
        return [_row(r) for r in rows]

    async def optimization(self, optimization_id: Any) -> dict[str, Any]:
        key = _uuid(optimization_id, "optimization")
        async with self._uow() as uow:
            row = (await uow.conn.execute(text(
                f"SELECT {_OPTIMIZATION_COLUMNS} FROM optimizations WHERE id = :id"), {"id": key})).first()
            if row is None:
                raise NotFound(f"no optimization {optimization_id!r}", code="optimization_not_found")
            trials = (await uow.conn.execute(text(
                "SELECT number, params, status, objective, metrics, error, finished_at"
                " FROM optimization_trials WHERE optimization_id = :id ORDER BY number"), {"id": key})).all()
        out = _row(row)
        out["trials"] = [_row(t) for t in trials]
        return out


_PACKAGE_COLUMNS = ("id, name, filename, kind, sha256, size_bytes, strategies, created_by, created_at,"
                    " updated_at")
_JOB_COLUMNS = ("j.id, j.submission_id, j.kind, j.bot_id, p.name AS package, j.package_sha256, j.status,"
                " j.result,"
                " j.num_cpus, j.memory_bytes, j.message, j.created_by, j.created_at, j.started_at,"
                " j.finished_at,"
                " (SELECT b.id FROM backtests b WHERE b.job_id = j.id) AS backtest_id,"
                " (SELECT o.id FROM optimizations o WHERE o.job_id = j.id) AS optimization_id")
_BACKTEST_SUMMARY = ("id, job_id, strategy, params, symbols, start_at, end_at, data, capital, fee_bps,"
                     " slippage_bps, status, progress, bars, metrics, final_equity, trade_count, error,"
                     " created_at, finished_at")
_OPTIMIZATION_COLUMNS = ("id, job_id, strategy, search_space, fixed_params, objective, max_drawdown, symbols,"
                         " start_at, split_at, end_at, data, capital, fee_bps, slippage_bps, num_trials,"
                         " concurrency, cpus_per_trial, status, trials_done, best_params, in_sample,"
                         " out_of_sample, error, created_at, finished_at")


def _row(row: Any) -> dict[str, Any]:
    return {k: _json(v) if k in _JSON_COLUMNS else v for k, v in row._asdict().items()}


_JSON_COLUMNS = {"params", "data", "metrics", "equity_curve", "search_space", "fixed_params", "best_params",
                 "in_sample", "out_of_sample", "strategies", "result"}


def _package(row: Any) -> dict[str, Any]:
    out = _row(row)
    out.pop("content", None)
    return out


def _pack(info: PackageInfo) -> bytes:
    """The files of a package as one zip (a module upload becomes a one-file zip)."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, content in sorted(info.files.items()):
            archive.writestr(path, content)
    return buffer.getvalue()


def _unpack(content: bytes) -> dict[str, bytes]:
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


async def _set_status(conn: AsyncConnection, job_id: uuid.UUID, table: str | None, status: str,
                      message: str | None = None) -> None:
    done = status in FINISHED
    await conn.execute(text(
        "UPDATE jobs SET status = :s, message = coalesce(:m, message),"
        " started_at = CASE WHEN :s = 'running' THEN coalesce(started_at, now()) ELSE started_at END,"
        " finished_at = CASE WHEN :done THEN now() ELSE finished_at END WHERE id = :j"),
        {"s": status, "m": message, "done": done, "j": job_id})
    if table is None:  # a bot's job: the bot's status is the runtime's
        return
    progress = ", progress = 1" if status == "succeeded" and table == "backtests" else ""
    await conn.execute(text(
        f"UPDATE {table} SET status = :s, error = CASE WHEN :s IN ('failed', 'stopped') THEN :m"
        f" ELSE error END, finished_at = CASE WHEN :done THEN now() ELSE finished_at END{progress}"
        " WHERE job_id = :j"), {"s": status, "m": message, "done": done, "j": job_id})


async def _add_trial(conn: AsyncConnection, job_id: uuid.UUID, event: Mapping[str, Any]) -> None:
    opt = (await conn.execute(text("SELECT id FROM optimizations WHERE job_id = :j"), {"j": job_id})).one()
    await conn.execute(text(
        "INSERT INTO optimization_trials (optimization_id, number, params, status, objective, metrics, error)"
        " VALUES (:o, :n, CAST(:p AS jsonb), :s, :v, CAST(:m AS jsonb), :e) ON CONFLICT DO NOTHING"),
        {"o": opt.id, "n": event["number"], "p": json.dumps(event["params"]), "s": event["status"],
         "v": event.get("objective"), "m": json.dumps(event.get("metrics")), "e": event.get("error")})
    await conn.execute(text(
        "UPDATE optimizations SET trials_done = (SELECT count(*) FROM optimization_trials"
        " WHERE optimization_id = :o) WHERE id = :o"), {"o": opt.id})


async def _store_backtest(conn: AsyncConnection, job_id: uuid.UUID, event: Mapping[str, Any]) -> None:
    bt = (await conn.execute(text("SELECT id FROM backtests WHERE job_id = :j"), {"j": job_id})).one()
    await conn.execute(text(
        "UPDATE backtests SET params = CAST(:p AS jsonb), metrics = CAST(:m AS jsonb), final_equity = :e,"
        " trade_count = :n, bars = :b, equity_curve = CAST(:c AS jsonb) WHERE id = :id"),
        {"p": json.dumps(event["params"]), "m": json.dumps(event["metrics"]), "e": event["final_equity"],
         "n": event["trade_count"], "b": event["bars"], "c": json.dumps(event["equity_curve"]), "id": bt.id})
    trades = event["trades"]
    if trades:
        await conn.execute(text(
            "INSERT INTO backtest_trades (backtest_id, seq, ts, symbol, side, quantity, price, fee,"
            " client_order_id) SELECT :id, * FROM unnest(CAST(:seq AS int[]), CAST(:ts AS timestamptz[]),"
            " CAST(:sym AS text[]), CAST(:side AS text[]), CAST(:q AS numeric[]), CAST(:p AS numeric[]),"
            " CAST(:f AS numeric[]), CAST(:c AS text[]))"),
            {"id": bt.id, "seq": list(range(1, len(trades) + 1)), "ts": [t["ts"] for t in trades],
             "sym": [t["symbol"] for t in trades], "side": [t["side"] for t in trades],
             "q": [t["quantity"] for t in trades], "p": [t["price"] for t in trades],
             "f": [t["fee"] for t in trades], "c": [t["client_order_id"] for t in trades]})


async def stop_unfinished_jobs(store: ResearchStore, ray_jobs: Any, reason: str) -> int:
    """Stop every queued or running job of the store's tenant (a suspension); return how many."""
    stopped = 0
    for job in await store.jobs(limit=10_000):
        if job["status"] in FINISHED:
            continue
        await ray_jobs.stop(job["submission_id"])
        await store.finish(job["id"], "stopped", reason)
        stopped += 1
    return stopped
