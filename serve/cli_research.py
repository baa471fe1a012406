"""``atp backtest``, ``atp optimize`` and ``atp job``: research from the command line.

* ``atp backtest`` runs the event-driven backtester here, on synthetic bars or a CSV /
  Parquet file, with a progress bar; ``--report out.html`` writes the HTML report. It needs
  no platform: the same engine runs behind ``POST /v1/backtests``.
* ``atp optimize`` and ``atp job`` talk to a running platform over HTTP (``--url``, and
  ``--api-key`` or ``ATP_API_KEY``, a trader key): a Tune search, or an uploaded strategy
  file run as a Ray job, followed until it ends.

Errors exit non-zero and name the option at fault.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from serve.cli import _fail, app, err, out
from trading.errors import AtpError, Invalid

job_app = typer.Typer(help="Run uploaded strategy code as Ray jobs on a platform.", no_args_is_help=True)
app.add_typer(job_app, name="job")

# Error fields (from the domain or the API) → the option that carries them.
OPTIONS = {
    "strategy": "--strategy",
    "symbols": "--symbol",
    "from": "--from",
    "to": "--to",
    "start": "--from",
    "end": "--to",
    "params": "--param",
    "search_space": "--search",
    "capital": "--capital",
    "fee_bps": "--fee-bps",
    "slippage_bps": "--slippage-bps",
    "data.seed": "--seed",
    "data.interval": "--interval",
    "data": "--interval",
    "objective": "--objective",
    "max_drawdown": "--max-drawdown",
    "in_sample": "--in-sample",
    "num_trials": "--trials",
    "concurrency": "--concurrency",
    "cpus_per_trial": "--cpus-per-trial",
    "file": "FILE",
    "filename": "FILE",
    "package": "--package",
    "cpu": "--cpus",
    "memory": "--memory-mb",
    "resources.num_cpus": "--cpus",
    "resources.memory_mb": "--memory-mb",
}
TERMINAL = ("succeeded", "failed", "stopped")

URL = typer.Option("http://127.0.0.1:8000", "--url", envvar="ATP_URL", help="the platform's base URL")
API_KEY = typer.Option(None, "--api-key", envvar="ATP_API_KEY", help="a trader API key of the tenant")
# Options every run takes (backtest, optimize, job submit), declared once.
SYMBOLS = typer.Option(..., "--symbol", help="a symbol to trade (repeat for several)")
FROM = typer.Option(..., "--from", help="first bar time, ISO (2024-01-01)")
TO = typer.Option(..., "--to", help="end (exclusive), ISO")
PARAMS = typer.Option(None, "--param", help="a strategy parameter, name=value")
INTERVAL = typer.Option("1m", "--interval", help="synthetic bar interval: 1m 5m 15m 1h 4h 1d")
SEED = typer.Option(7, "--seed", help="synthetic data seed")
CAPITAL = typer.Option("100000", "--capital", help="starting cash")
FEE_BPS = typer.Option("5", "--fee-bps", help="fee in basis points of notional")
WAIT = typer.Option(True, "--wait/--no-wait", help="follow it to the end")


def _option(field: str | None) -> str | None:
    if field is None:
        return None
    if field in OPTIONS:
        return OPTIONS[field]
    head = field.split(".", 1)[0]
    return OPTIONS.get(head, field)


def _die(exc: AtpError) -> None:
    _fail(exc, {exc.field or "": _option(exc.field) or ""})


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pairs(items: list[str] | None, option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _die(Invalid(f"{item!r} is not name=value", field=option))
        pairs[key.strip()] = value.strip()
    return pairs


def _params(items: list[str] | None) -> dict[str, Any]:
    return {k: _value(v) for k, v in _pairs(items, "--param").items()}


def _search(items: list[str] | None) -> dict[str, Any]:
    """``fast=int:5:20``, ``x=float:0.1:0.9``, ``slow=choice:30,50,100`` → a search space."""
    space: dict[str, Any] = {}
    for name, spec in _pairs(items, "--search").items():
        kind, _, rest = spec.partition(":")
        if kind in ("int", "float"):
            low, sep, high = rest.partition(":")
            if not sep:
                _die(Invalid(f"{name}={spec}: write {kind}:LOW:HIGH", field="--search"))
            space[name] = {"type": kind, "low": _value(low), "high": _value(high)}
        elif kind == "choice" and rest:
            space[name] = {"type": "choice", "values": [_value(v) for v in rest.split(",")]}
        else:
            _die(
                Invalid(
                    f"{name}={spec}: write int:LOW:HIGH, float:LOW:HIGH or choice:A,B,C", field="--search"
                )
            )
    return space


def _time(text: str, option: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        _die(Invalid(f"{text!r} is not an ISO date or time (2024-01-31 or 2024-01-31T12:00)", field=option))
        raise  # unreachable
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _metrics_table(metrics: dict[str, Any]) -> Table:
    table = Table("metric", "value", title="metrics")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
    return table


@app.command()
def backtest(
    strategy: str = typer.Option(..., "--strategy", help="a built-in strategy, e.g. sma_crossover"),
    symbol: list[str] = SYMBOLS,
    start: str = FROM,
    end: str = TO,
    param: list[str] = PARAMS,
    csv: Path = typer.Option(None, "--csv", help="bars from a CSV or Parquet file instead of synthetic"),
    interval: str = INTERVAL,
    seed: int = SEED,
    capital: str = CAPITAL,
    fee_bps: str = FEE_BPS,
    slippage_bps: str = typer.Option("0", "--slippage-bps", help="slippage in basis points"),
    report: Path = typer.Option(None, "--report", help="write the HTML report here"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Backtest a built-in strategy here and print its metrics (optionally an HTML report)."""
    from datetime import timedelta

    from actors.research import INTERVALS
    from trading.backtest import run_backtest
    from trading.data import FileSource, SyntheticSource
    from trading.metrics import compute_metrics
    from trading.report import render_report
    from trading.research import metrics_to_json
    from trading.strategy import get_strategy

    first, last = _time(start, "--from"), _time(end, "--to")
    if last <= first:
        _die(Invalid("--to must be after --from", field="to"))
    try:
        cls = get_strategy(strategy)
        if cls.uses_model:
            raise Invalid(f"--strategy {cls.name} trades on a model of the platform: backtest it there "
                          "(POST /v1/backtests), not locally", field="strategy")
        params = _params(param)
        cls(sorted(symbol), **params)  # refuse bad parameters before loading any data
        if csv is not None:
            source: Any = FileSource(csv)
            total = None
        else:
            if interval not in INTERVALS:
                raise Invalid(f"--interval must be one of {', '.join(INTERVALS)}", field="data.interval")
            step = timedelta(seconds=INTERVALS[interval])
            source = SyntheticSource(seed=seed, interval=step)
            total = int((last - first) / step) * len(symbol)
        bars = source.bars(sorted(symbol), first, last)
        with Progress(
            TextColumn("backtesting"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.completed:,.0f} bars"),
            TimeRemainingColumn(),
            console=err,
            transient=True,
            disable=as_json,
        ) as progress:
            task = progress.add_task("bars", total=total)

            def counted() -> Any:
                for n, bar in enumerate(bars, 1):
                    if n & 1023 == 0:
                        progress.update(task, completed=n)
                    yield bar

            result = run_backtest(
                strategy,
                params,
                counted(),
                capital=capital,
                fee_bps=fee_bps,
                slippage_bps=slippage_bps,
                symbols=sorted(symbol),
            )
        if len(result.equity_curve) < 2:
            raise Invalid("the period holds fewer than two bar times", field="to")
        metrics = compute_metrics(result.equity_curve, result.fills, capital=result.capital)
    except AtpError as exc:
        _die(exc)
        raise  # unreachable
    summary = {
        "strategy": result.strategy,
        "params": {k: str(v) if isinstance(v, Decimal) else v for k, v in result.params.items()},
        "bars": len(result.equity_curve),
        "trades": len(result.fills),
        "final_equity": str(result.final_equity),
        "metrics": metrics_to_json(metrics),
    }
    if report is not None:
        report.write_text(
            render_report(
                title=f"Backtest {strategy} {', '.join(sorted(symbol))}",
                equity_curve=result.equity_curve,
                fills=result.fills,
                metrics=metrics,
                params={
                    "strategy": strategy,
                    **result.params,
                    "from": first.isoformat(),
                    "to": last.isoformat(),
                    "capital": capital,
                    "fee_bps": fee_bps,
                    "slippage_bps": slippage_bps,
                },
            )
        )
        summary["report"] = str(report)
    if as_json:
        out.print_json(json.dumps(summary))
        return
    out.print(
        f"{strategy} {json.dumps(summary['params'])} on {', '.join(sorted(symbol))}: "
        f"{summary['bars']:,} bar times, {summary['trades']:,} trades, final equity {result.final_equity}"
    )
    out.print(_metrics_table(metrics_to_json(metrics)))
    if report is not None:
        out.print(f"report: {report}")


class Api:
    """A tenant's view of the platform API for the CLI: errors become CLI errors."""

    def __init__(self, url: str, api_key: str | None) -> None:
        if not api_key:
            _die(Invalid("an API key is needed: --api-key or ATP_API_KEY", field="--api-key"))
        self._http = httpx.Client(
            base_url=url.rstrip("/"), timeout=60, headers={"Authorization": f"Bearer {api_key}"}
        )

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            err.print(f"[red]Error:[/red] cannot reach the platform ({type(exc).__name__}): is --url right?")
            raise typer.Exit(1) from None
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                error = {"message": response.text[:500], "field": None, "code": "error"}
            option = _option(error.get("field"))
            where = f"invalid value for {option}: " if option else ""
            err.print(
                f"[red]Error ({response.status_code} {error.get('code')}):[/red] {where}{error['message']}"
            )
            raise typer.Exit(2 if response.status_code == 422 else 1)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.call(method, path, **kwargs).json()

    def follow(self, path: str, *, label: str, done: str, total: str, wait_seconds: float = 2.0) -> Any:
        """Poll `path` until its status is final, with a progress bar of `done` / `total`."""
        with Progress(
            TextColumn(label),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.description}"),
            console=err,
            transient=True,
        ) as progress:
            task = progress.add_task("queued", total=None)
            while True:
                body = self.json("GET", path)
                completed = body.get(done) or 0
                progress.update(
                    task,
                    total=body.get(total) if total in body else 1,
                    completed=completed,
                    description=body["status"],
                )
                if body["status"] in TERMINAL:
                    return body
                time.sleep(wait_seconds)


def _run_body(
    strategy: str,
    symbol: list[str],
    start: str,
    end: str,
    param: list[str] | None,
    interval: str,
    seed: int,
    capital: str,
    fee_bps: str,
    cpus: float | None,
    memory_mb: int | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "strategy": strategy,
        "symbols": symbol,
        "from": _time(start, "--from").isoformat(),
        "to": _time(end, "--to").isoformat(),
        "params": _params(param),
        "data": {"source": "synthetic", "seed": seed, "interval": interval},
        "capital": capital,
        "fee_bps": fee_bps,
    }
    resources = {k: v for k, v in (("num_cpus", cpus), ("memory_mb", memory_mb)) if v is not None}
    if resources:
        body["resources"] = resources
    return body


def _print_optimization(found: dict[str, Any]) -> None:
    if found["status"] != "succeeded":
        err.print(f"[red]optimization {found['status']}:[/red] {found.get('error')}")
        raise typer.Exit(1)
    out.print(f"best parameters: {json.dumps(found['best_params'])}")
    for side in ("in_sample", "out_of_sample"):
        judged = found[side]
        out.print(f"{side.replace('_', '-')}: objective {judged['objective']}")
        if judged.get("metrics"):
            out.print(_metrics_table(judged["metrics"]))


@app.command()
def optimize(
    strategy: str = typer.Option(..., "--strategy", help="a built-in strategy"),
    symbol: list[str] = SYMBOLS,
    start: str = FROM,
    end: str = TO,
    search: list[str] = typer.Option(
        ..., "--search", help="fast=int:5:20, x=float:0.1:0.9, slow=choice:30,50"
    ),
    param: list[str] = typer.Option(None, "--param", help="a fixed parameter, name=value"),
    objective: str = typer.Option("sharpe", "--objective", help="sharpe, calmar or return"),
    max_drawdown: float = typer.Option(None, "--max-drawdown", help="drawdown cap, a fraction"),
    in_sample: float = typer.Option(0.7, "--in-sample", help="fraction of the period the trials see"),
    trials: int = typer.Option(20, "--trials", help="number of trials"),
    concurrency: int = typer.Option(1, "--concurrency", help="trials at once"),
    cpus_per_trial: float = typer.Option(0.5, "--cpus-per-trial", help="CPUs each trial reserves"),
    interval: str = INTERVAL,
    seed: int = SEED,
    capital: str = CAPITAL,
    fee_bps: str = FEE_BPS,
    wait: bool = WAIT,
    url: str = URL,
    api_key: str = API_KEY,
) -> None:
    """Optimise a strategy's parameters with Ray Tune on a platform (POST /v1/optimizations)."""
    api = Api(url, api_key)
    body = {
        **_run_body(strategy, symbol, start, end, param, interval, seed, capital, fee_bps, None, None),
        "search_space": _search(search),
        "objective": objective,
        "in_sample": in_sample,
        "num_trials": trials,
        "concurrency": concurrency,
        "cpus_per_trial": cpus_per_trial,
    }
    if max_drawdown is not None:
        body["max_drawdown"] = max_drawdown
    created = api.json("POST", "/v1/optimizations", json=body)
    out.print(f"optimization {created['id']} (job {created['job_id']})")
    if wait:
        _print_optimization(
            api.follow(
                f"/v1/optimizations/{created['id']}", label="trials", done="trials_done", total="num_trials"
            )
        )


@job_app.command("submit")
def job_submit(
    file: Path = typer.Argument(
        ..., help="a strategy module (.py) or a zip of modules", exists=True, dir_okay=False, readable=True
    ),
    strategy: str = typer.Option(..., "--strategy", help="the strategy's name (its `name` attribute)"),
    symbol: list[str] = SYMBOLS,
    start: str = FROM,
    end: str = TO,
    kind: str = typer.Option("backtest", "--kind", help="backtest or optimization"),
    package: str = typer.Option(None, "--package", help="the package name (default: the file's stem)"),
    param: list[str] = PARAMS,
    search: list[str] = typer.Option(None, "--search", help="for --kind optimization: fast=int:5:20"),
    trials: int = typer.Option(10, "--trials", help="for --kind optimization"),
    interval: str = INTERVAL,
    seed: int = SEED,
    capital: str = CAPITAL,
    fee_bps: str = FEE_BPS,
    cpus: float = typer.Option(None, "--cpus", help="CPUs the job's driver reserves"),
    memory_mb: int = typer.Option(None, "--memory-mb", help="memory the driver reserves (MiB)"),
    wait: bool = WAIT,
    url: str = URL,
    api_key: str = API_KEY,
) -> None:
    """Upload a strategy file and run it as a Ray job (a backtest or a Tune search)."""
    if kind not in ("backtest", "optimization"):
        _die(Invalid("--kind must be backtest or optimization", field="--kind"))
    api = Api(url, api_key)
    name = package or file.stem.lower().replace("-", "_")
    stored = api.json(
        "PUT", f"/v1/strategy-packages/{name}", params={"filename": file.name}, content=file.read_bytes()
    )
    out.print(
        f"package {stored['name']} ({stored['sha256'][:12]}): "
        + ", ".join(s["name"] for s in stored["strategies"])
    )
    body = {
        **_run_body(strategy, symbol, start, end, param, interval, seed, capital, fee_bps, cpus, memory_mb),
        "kind": kind,
        "package": name,
    }
    if kind == "optimization":
        body.update({"search_space": _search(search), "num_trials": trials})
    job = api.json("POST", "/v1/jobs", json=body)
    out.print(f"job {job['id']} ({job['submission_id']}) {job['status']}")
    if wait:
        _show_job(api, api.follow(f"/v1/jobs/{job['id']}", label="job", done="", total=""))


def _show_job(api: Api, job: dict[str, Any]) -> None:
    out.print(f"job {job['id']}: {job['status']}")
    if job["status"] != "succeeded":
        err.print(job.get("message") or "")
        raise typer.Exit(1)
    if job.get("backtest_id"):
        found = api.json("GET", f"/v1/backtests/{job['backtest_id']}")
        out.print(
            f"backtest {found['id']}: {found['trade_count']} trades, final equity {found['final_equity']}"
        )
        if found.get("metrics"):
            out.print(_metrics_table(found["metrics"]))
    elif job.get("optimization_id"):
        _print_optimization(api.json("GET", f"/v1/optimizations/{job['optimization_id']}"))


@job_app.command("status")
def job_status(
    job: str = typer.Argument(..., help="the job id"), url: str = URL, api_key: str = API_KEY
) -> None:
    """A job's status (failed: with its last log lines)."""
    found = Api(url, api_key).json("GET", f"/v1/jobs/{job}")
    out.print_json(json.dumps(found, default=str))


@job_app.command("logs")
def job_logs(
    job: str = typer.Argument(..., help="the job id"),
    tail: int = typer.Option(None, "--tail", help="only the last N lines"),
    url: str = URL,
    api_key: str = API_KEY,
) -> None:
    """A job driver's log."""
    params = {"tail": tail} if tail else {}
    out.print(Api(url, api_key).call("GET", f"/v1/jobs/{job}/logs", params=params).text, markup=False)


@job_app.command("stop")
def job_stop(
    job: str = typer.Argument(..., help="the job id"), url: str = URL, api_key: str = API_KEY
) -> None:
    """Stop a running job."""
    found = Api(url, api_key).json("POST", f"/v1/jobs/{job}/stop")
    out.print(f"job {found['id']}: {found['status']}")
