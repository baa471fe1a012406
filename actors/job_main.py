"""The driver of a platform Ray job: one backtest, or one Tune search, reported to the API.

The gateway submits ``python -m actors.job_main`` as a Ray job whose working directory
holds ``atp_job.json`` (the validated request) and, for an uploaded strategy package, its
modules. The job gets no database credentials: ``ATP_API_URL`` and a short-lived job token
``ATP_JOB_TOKEN`` (viewer role of its tenant) let it read market data and post its events
to ``POST /v1/jobs/{id}/events``: ``started``, ``progress``, ``trial``, then ``backtest`` or
``optimization`` with the result, or ``failed`` with the reason. A job that dies without a
word is marked failed by the gateway from Ray's job status and its last log lines.

A Tune search runs its trials as Ray actors in the tenant's namespace (the driver connects
with ``ray.init(namespace=...)``: actors created by a job live in its namespace), each
reserving ``cpus_per_trial`` and at most ``concurrency`` at once, so admission and metering
see them as the tenant's. Trials backtest the in-sample period; the best parameters are
then backtested once on the out-of-sample period, which no trial saw.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from trading.backtest import BacktestResult, default_instrument, run_backtest
from trading.data import SyntheticSource
from trading.errors import Invalid
from trading.instruments import Bar, Instrument
from trading.metrics import compute_metrics
from trading.research import (
    MAX_STORED_TRADES,
    SearchSpace,
    fill_to_json,
    metrics_to_json,
    objective_value,
    thin_curve,
)
from trading.strategy import Predictions, Strategy, get_strategy, register, strategies

CONFIG_FILE = "atp_job.json"
PROGRESS_SECONDS = 2.0
PAGE = 5000
TRACE_LINES = 20
BOT_WATCH_SECONDS = 2.0


class Reporter:
    """Talks to the platform API as the job (its token), retrying transient failures."""

    def __init__(self, url: str, token: str, job_id: str) -> None:
        self._url, self._token, self._job_id = url.rstrip("/"), token, job_id
        self._http: httpx.Client | None = None

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks: leave the client
        return {**self.__dict__, "_http": None}

    @property
    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(base_url=self._url, timeout=60,
                                      headers={"Authorization": f"Bearer {self._token}"})
        return self._http

    def send(self, event: Mapping[str, Any]) -> None:
        # A 404 is retried here: the job's row commits just after Ray accepted the job.
        self._call("POST", f"/v1/jobs/{self._job_id}/events", json=event, retry={404, 429})

    def get(self, path: str, params: Mapping[str, Any]) -> Any:
        """GET `path` as JSON; None when the resource does not exist (404)."""
        response = self._call("GET", path, params=dict(params), retry={429}, missing_ok=True)
        return None if response is None else response.json()

    def get_bytes(self, path: str) -> tuple[bytes, dict[str, str]]:
        """GET `path` as bytes, with the response's headers."""
        response = self._call("GET", path, retry={429})
        assert response is not None
        return response.content, dict(response.headers)

    def _call(self, method: str, path: str, *, retry: set[int], missing_ok: bool = False,
              **kwargs: Any) -> httpx.Response | None:
        for attempt in range(5):
            try:
                response = self._client.request(method, path, **kwargs)
            except httpx.TransportError:
                if attempt == 4:
                    raise
            else:
                code = response.status_code
                if code < 500 and code not in retry:
                    if code == 404 and missing_ok:
                        return None
                    if code >= 400:
                        raise RuntimeError(f"{method} {path} answered {code}: {response.text[:500]}")
                    return response
                if attempt == 4:
                    response.raise_for_status()
            time.sleep(0.5 * 2 ** attempt)
        raise AssertionError("unreachable")


def load_package(config: Mapping[str, Any]) -> None:
    """Import the package's strategy modules (from the working directory) and register them."""
    found = config.get("package_strategies") or []
    if not found:
        return
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for item in found:
        module = importlib.import_module(item["module"])
        cls = getattr(module, item["class_name"], None)
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise Invalid(f"{item['module']}.{item['class_name']} is not a Strategy subclass once "
                          "imported", field="strategy")
        if strategies().get(cls.name) is not cls:
            register(cls)


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _instruments(config: Mapping[str, Any], reporter: Reporter | None) -> dict[str, Instrument]:
    symbols = config["symbols"]
    known = {s: default_instrument(s) for s in symbols}
    if config["data"]["source"] == "market" and reporter is not None:
        for row in reporter.get("/v1/market/instruments", {}) or []:
            if row["symbol"] in known:
                known[row["symbol"]] = Instrument(row["symbol"], Decimal(row["tick_size"]),
                                                  Decimal(row["lot_size"]), Decimal(row["min_notional"]))
    return known


def load_bars(config: Mapping[str, Any], start: datetime, end: datetime,
              reporter: Reporter | None) -> list[Bar]:
    """The bars of the request's symbols in [start, end), in (ts, symbol) order."""
    data, symbols = config["data"], sorted(config["symbols"])
    if data["source"] == "synthetic":
        source = SyntheticSource(seed=int(data["seed"]),
                                 interval=timedelta(seconds=int(data["interval_seconds"])))
        return list(source.bars(symbols, start, end))
    if reporter is None:
        raise Invalid("market data needs the platform API", field="data.source")
    bars: list[Bar] = []
    for symbol in symbols:
        since = start
        while since < end:
            page = reporter.get("/v1/market/bars", {"symbol": symbol, "start": since.isoformat(),
                                                    "end": end.isoformat(), "limit": PAGE}) or []
            bars.extend(Bar(symbol, _ts(b["ts"]), Decimal(b["open"]), Decimal(b["high"]),
                            Decimal(b["low"]), Decimal(b["close"]), Decimal(b["volume"])) for b in page)
            if len(page) < PAGE:
                break
            since = _ts(page[-1]["ts"]) + timedelta(microseconds=1)
    if not bars:
        raise Invalid(f"the platform holds no bars of {', '.join(symbols)} between {start.isoformat()} "
                      f"and {end.isoformat()}", field="data")
    bars.sort(key=lambda b: (b.ts, b.symbol))
    return bars


def _counted(bars: list[Bar], on_progress: Callable[[int], None]) -> Iterator[Bar]:
    next_at = time.monotonic() + PROGRESS_SECONDS
    for i, bar in enumerate(bars):
        if i & 4095 == 0 and time.monotonic() >= next_at:
            on_progress(i)
            next_at = time.monotonic() + PROGRESS_SECONDS
        yield bar


def backtest(config: Mapping[str, Any], params: Mapping[str, Any], bars: Iterable[Bar],
             instruments: Mapping[str, Instrument], predictions: Predictions | None = None
             ) -> BacktestResult:
    return run_backtest(config["strategy"], params, bars, capital=config["capital"],
                        fee_bps=config["fee_bps"], slippage_bps=config["slippage_bps"],
                        symbols=sorted(config["symbols"]), instruments=instruments,
                        predictions=predictions)


def model_scores(config: Mapping[str, Any], reporter: Reporter, bars: list[Bar]) -> Predictions | None:
    """For a strategy that `uses_model`: the version the gateway fixed, fetched with the job's
    token, its checksum verified, and every bar scored in-process (`models.signals`)."""
    model = config.get("model")
    if not get_strategy(config["strategy"]).uses_model:
        return None
    if not model:
        raise Invalid(f"strategy {config['strategy']} needs a model of the platform", field="strategy")
    from models.artifacts import load_artifact
    from models.signals import score_bars

    name, version = model["name"], int(model["version"])
    blob, headers = reporter.get_bytes(f"/v1/models/{name}/versions/{version}/artifact")
    loaded = load_artifact(blob, headers.get("x-artifact-sha256", ""))
    _torch_threads(1)
    return score_bars(loaded, bars)


def evaluate(config: Mapping[str, Any], result: BacktestResult) -> dict[str, Any]:
    """Metrics (JSON) and the objective of one backtest; metrics None when too short to judge."""
    if len(result.equity_curve) < 2:
        return {"metrics": None, "objective": None}
    metrics = compute_metrics(result.equity_curve, result.fills, capital=result.capital)
    objective = config.get("objective")
    value = objective_value(metrics, objective, config.get("max_drawdown")) if objective else None
    return {"metrics": metrics_to_json(metrics), "objective": value}


def run_backtest_job(config: Mapping[str, Any], reporter: Reporter) -> None:
    start, end = _ts(config["from"]), _ts(config["to"])
    get_strategy(config["strategy"])(sorted(config["symbols"]), **config["params"])  # Invalid early
    bars = load_bars(config, start, end, reporter)
    total = len(bars)
    scores = model_scores(config, reporter, bars)
    reporter.send({"type": "progress", "fraction": 0.0, "bars": 0})
    result = backtest(config, config["params"], _counted(
        bars, lambda n: reporter.send({"type": "progress", "fraction": n / total, "bars": n})),
        _instruments(config, reporter), scores)
    judged = evaluate(config, result)
    reporter.send({
        "type": "backtest", "bars": total, "params": {k: _plain(v) for k, v in result.params.items()},
        "metrics": judged["metrics"], "final_equity": str(result.final_equity),
        "trade_count": len(result.fills),
        "trades": [fill_to_json(f) for f in result.fills[:MAX_STORED_TRADES]],
        "equity_curve": [[t.isoformat(), str(v)] for t, v in thin_curve(result.equity_curve)],
    })


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else value


def _tune_space(space: SearchSpace) -> dict[str, Any]:
    from ray import tune

    out: dict[str, Any] = {}
    for d in space.dimensions:
        if d.type == "int":
            out[d.name] = tune.randint(int(d.low), int(d.high) + 1)
        elif d.type == "float":
            out[d.name] = tune.uniform(float(d.low), float(d.high))
        else:
            out[d.name] = tune.choice([_plain(v) for v in d.values])
    return out


def _trial(params: dict[str, Any], *, bars: list[Bar], config: dict[str, Any],
           scores: Predictions | None = None) -> None:
    """One Tune trial: backtest the in-sample bars with `params` (over the fixed ones)."""
    from ray import tune

    load_package(config)
    merged = {**config["fixed_params"], **params}
    try:
        instruments = {k: Instrument(**v) for k, v in config["instruments"].items()}
        judged = evaluate(config, backtest(config, merged, bars, instruments, scores))
    except Invalid as exc:
        tune.report({"objective": -math.inf, "status": "failed", "error": exc.message})
        return
    value = judged["objective"]
    tune.report({"objective": -math.inf if value is None else value,
                 "status": "succeeded" if value is not None else "infeasible",
                 "metrics_json": json.dumps(judged["metrics"])})


def run_optimization_job(config: dict[str, Any], reporter: Reporter) -> None:
    import ray
    from ray import tune

    start, split, end = _ts(config["from"]), _ts(config["split_at"]), _ts(config["to"])
    cls = get_strategy(config["strategy"])
    space = SearchSpace.parse(config["search_space"], cls.params, fixed=config["fixed_params"])
    bars = load_bars(config, start, end, reporter)
    instruments = _instruments(config, reporter)
    config = {**config, "instruments": {k: {"symbol": i.symbol, "tick_size": i.tick_size,
                                            "lot_size": i.lot_size, "min_notional": i.min_notional}
                                        for k, i in instruments.items()}}
    in_sample = [b for b in bars if b.ts < split]
    out_of_sample = [b for b in bars if b.ts >= split]
    if not in_sample or not out_of_sample:
        raise Invalid("the data has no bars on one side of the in-sample split", field="in_sample")
    scores = model_scores(config, reporter, bars)  # each bar's score uses bars up to it only
    ray.init(namespace=config["namespace"], log_to_driver=False)
    done = [0]

    class Progress(tune.Callback):
        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self._report(trial, trial.last_result or {})

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self._report(trial, {"status": "failed", "error": "the trial's process failed"})

        def _report(self, trial: Any, result: Mapping[str, Any]) -> None:
            done[0] += 1
            metrics = result.get("metrics_json")
            value = result.get("objective")
            reporter.send({"type": "trial", "number": done[0],
                           "params": {k: _plain(v) for k, v in trial.config.items()},
                           "status": result.get("status", "failed"),
                           "objective": value if isinstance(value, float) and math.isfinite(value) else None,
                           "metrics": json.loads(metrics) if metrics else None,
                           "error": result.get("error")})

    resources = {"cpu": float(config["cpus_per_trial"]), "memory": int(config["memory_per_trial"])}
    trainable = tune.with_resources(tune.with_parameters(_trial, bars=in_sample, config=config,
                                                                scores=scores), resources)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    with tempfile.TemporaryDirectory(prefix="atp-tune-") as storage:
        tuner = tune.Tuner(
            trainable, param_space=_tune_space(space),
            tune_config=tune.TuneConfig(
                num_samples=int(config["num_trials"]), max_concurrent_trials=int(config["concurrency"]),
                search_alg=BasicVariantGenerator(random_state=int(config.get("seed", 0)))),
            run_config=tune.RunConfig(storage_path=storage, name="search", verbose=0,
                                      callbacks=[Progress()]))
        grid = tuner.fit()
        results = [grid[i] for i in range(len(grid))]
        ranked: list[tuple[float, dict[str, Any], dict[str, Any]]] = [
            (float(r.metrics["objective"]), dict(r.config or {}), r.metrics) for r in results
            if r.metrics and r.metrics.get("status") == "succeeded"]
    if not ranked:
        outcomes = [(r.metrics or {}).get("status") or "failed" for r in results]
        errors = [str((r.metrics or {}).get("error") or r.error or "") for r in results]
        first = next((e for e in errors if e), "none")
        raise Invalid(f"no trial met the objective: {outcomes.count('failed')} failed, "
                      f"{outcomes.count('infeasible')} infeasible (over the drawdown cap or an undefined "
                      f"ratio) of {len(results)}; first error: {first[:500]}", field="objective")
    best_value, best_config, best_metrics = max(ranked, key=lambda r: r[0])
    best = {**config["fixed_params"], **best_config}
    oos = evaluate(config, backtest(config, best, out_of_sample, instruments, scores))
    reporter.send({"type": "optimization", "best_params": {k: _plain(v) for k, v in best.items()},
                   "in_sample": {"objective": best_value,
                                 "metrics": json.loads(best_metrics["metrics_json"])},
                   "out_of_sample": oos})


def _signal_backtest(config: Mapping[str, Any], model: Any, bars: list[Bar], start_row: int
                     ) -> dict[str, Any]:
    """Backtest the model's signal on bars ``start_row..``: long while it predicts a rise, flat
    otherwise (a ``return`` model: while the predicted return is positive). Same fill model
    as any backtest (next bar's open, fees)."""
    import numpy as np

    from models.features import compute_features
    from trading.vector import BarArrays, execute_signals

    features = compute_features(model.spec, bars)
    first = max(start_row, model.spec.warmup + model.lookback - 1)
    ends = np.arange(first, len(bars))
    if len(ends) < 2:
        return {"metrics": None, "trades": 0, "final_equity": str(config["capital"])}
    windows = np.stack([features[e - model.lookback + 1:e + 1] for e in ends])
    predicted = model.predict(windows)
    bullish = predicted > (0.5 if model.kind == "direction" else 0.0)
    signals = np.zeros(len(bars) - first, dtype=np.int8)
    position = False
    for i, up in enumerate(bullish.tolist()):
        if up != position:
            signals[i] = 1 if up else -1
            position = up
    test_bars = bars[first:]
    symbol = test_bars[0].symbol
    result = execute_signals(BarArrays.from_bars(test_bars), signals, quantity=config["quantity"],
                             allow_short=False, capital=config["capital"], fee_bps=config["fee_bps"],
                             slippage_bps=config["slippage_bps"],
                             tick=default_instrument(symbol).tick_size)
    judged = evaluate({}, BacktestResult(
        strategy=f"model:{config['model']}", params={}, symbols=(symbol,),
        capital=result.capital, fills=result.fills, orders=[],
        equity_curve=[(t, Decimal(repr(v))) for t, v in result.equity_curve],
        final_equity=result.final_equity))
    return {"metrics": judged["metrics"], "trades": len(result.trades),
            "final_equity": str(result.final_equity),
            "from": test_bars[0].ts.isoformat(), "bars": len(test_bars)}


def _train_trial(settings: dict[str, Any], *, split: Any, config: dict[str, Any]) -> None:
    """One Tune trial: train with `settings` over the fixed ones, reporting each epoch."""
    from ray import tune

    from models.networks import build_network
    from models.training import train

    _torch_threads(float(config["cpus_per_trial"]))
    hyper, training = _settings(config, settings)
    network = build_network(config["architecture"], split.train.X.shape[1], config["lookback"],
                            config["label"]["kind"], seed=config["seed"], **hyper)
    def report(stats: Any) -> None:
        tune.report({"validation_loss": stats.validation_loss, "epoch": stats.epoch})

    train(network, split, seed=config["seed"], **training, on_epoch=report)


def _torch_threads(cpus: float) -> None:
    """As many torch threads as the CPUs reserved (at least one): more would fight the neighbours."""
    import torch

    torch.set_num_threads(max(1, int(cpus)))


def _settings(config: Mapping[str, Any], searched: Mapping[str, Any]
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split searched values between the network's hyperparameters and the training settings."""
    training = {**config["training"], **{k: v for k, v in searched.items() if k in config["training"]}}
    hyper = {**config["hyper"], **{k: v for k, v in searched.items() if k not in config["training"]}}
    return hyper, training


def run_train_job(config: dict[str, Any], reporter: Reporter) -> None:
    """Train (with a Tune search when asked), score on the test part, backtest the signal."""
    import base64

    from models.artifacts import load_artifact, save_artifact
    from models.datasets import make_dataset, time_split
    from models.features import FeatureSpec
    from models.networks import build_network
    from models.training import train

    _torch_threads(float(config.get("resources_cpus", 1.0)))
    start, end = _ts(config["from"]), _ts(config["to"])
    bars = load_bars(config, start, end, reporter)
    spec = FeatureSpec.from_json(config["features"])
    label = config["label"]
    dataset = make_dataset(spec, bars, horizon=label["horizon"], kind=label["kind"])
    split = time_split(dataset, train=config["split"]["train"], validation=config["split"]["validation"])
    best: dict[str, Any] = {}
    trials: list[dict[str, Any]] = []
    if config["search_space"]:
        best, trials = _search(config, split)
    hyper, training = _settings(config, best)
    network = build_network(config["architecture"], spec.n_features, config["lookback"], label["kind"],
                            seed=config["seed"], **hyper)
    reporter.send({"type": "progress", "fraction": 0.9, "bars": len(bars)})
    result = train(network, split, seed=config["seed"], **training)
    metrics = {**result.metrics, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
               "best_validation_loss": result.best_validation_loss, **{f"samples_{k}": v for k, v in
                                                                        result.samples.items()}}
    artifact = save_artifact(network, spec, horizon=label["horizon"], metrics=result.metrics)
    model = load_artifact(artifact.blob, artifact.sha256)
    backtest_report = _signal_backtest({**config, "quantity": config.get("quantity", 1)}, model, bars,
                                       int(split.test.rows[0]))
    reporter.send({"type": "model", "artifact": base64.b64encode(artifact.blob).decode(),
                   "sha256": artifact.sha256, "params": {"hyper": network.hyper, "training": training,
                                                         "searched": best, "trials": trials},
                   "metrics": metrics, "backtest": backtest_report})


def _search(config: dict[str, Any], split: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A Tune search with ASHA over the search space; return the best settings and every trial."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    ray.init(namespace=config["namespace"], log_to_driver=False, ignore_reinit_error=True)
    space: dict[str, Any] = {}
    for name, dim in config["search_space"].items():
        if dim["type"] == "int":
            space[name] = tune.randint(int(dim["low"]), int(dim["high"]) + 1)
        elif dim["type"] == "float":
            space[name] = tune.uniform(float(dim["low"]), float(dim["high"]))
        elif dim["type"] == "log_float":
            space[name] = tune.loguniform(float(dim["low"]), float(dim["high"]))
        else:
            space[name] = tune.choice(dim["values"])
    resources = {"cpu": float(config["cpus_per_trial"]), "memory": int(config["memory_per_trial"])}
    trainable = tune.with_resources(tune.with_parameters(_train_trial, split=split, config=config), resources)
    epochs = int(config["training"]["epochs"])
    with tempfile.TemporaryDirectory(prefix="atp-train-") as storage:
        grid = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(
                num_samples=int(config["num_trials"]), max_concurrent_trials=int(config["concurrency"]),
                scheduler=ASHAScheduler(metric="validation_loss", mode="min", max_t=epochs, grace_period=1),
                search_alg=BasicVariantGenerator(random_state=int(config["seed"]))),
            run_config=tune.RunConfig(storage_path=storage, name="train", verbose=0)).fit()
        results = [grid[i] for i in range(len(grid))]
    trials: list[dict[str, Any]] = []
    for r in results:
        losses = [] if r.metrics_dataframe is None or "validation_loss" not in r.metrics_dataframe \
            else r.metrics_dataframe["validation_loss"].tolist()
        trials.append({"settings": dict(r.config or {}),
                       "best_validation_loss": min(losses) if losses else None,
                       "epochs": len(losses), "error": None if r.error is None else str(r.error)[:500]})
    done = [t for t in trials if t["best_validation_loss"] is not None]
    if not done:
        raise Invalid("every training trial failed", field="search_space")
    best: dict[str, Any] = min(done, key=lambda t: float(t["best_validation_loss"]))["settings"]
    return best, trials


def run_inspect_job(config: Mapping[str, Any], reporter: Reporter) -> None:
    """Describe the package's strategies (their declared parameters) once imported."""
    registered = strategies()
    described = []
    for found in config["package_strategies"]:
        cls = registered[found["name"]]
        description = cls.describe()
        described.append({**found, "description": description["description"],
                          "params": description["params"]})
    reporter.send({"type": "inspected", "strategies": described})


def run_bot_job(config: dict[str, Any], reporter: Reporter) -> None:
    """Create the bot's strategy actor, say so, then watch it until it stops or fails."""
    import ray

    from actors.package_bots import PackageStrategyActor

    ray.init(namespace=config["namespace"], log_to_driver=False)
    bot = config["bot"]
    actor = PackageStrategyActor.options(  # type: ignore[attr-defined]
        name=f"strategy-{bot['id']}", namespace=config["namespace"], num_cpus=bot["num_cpus"],
        memory=bot["memory_bytes"], num_gpus=bot["num_gpus"], max_concurrency=100,
        resources=bot.get("resources") or None,
    ).remote(config, os.environ["ATP_API_URL"], os.environ["ATP_JOB_TOKEN"])
    try:
        ray.get(actor.start.remote())
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(exc.cause, Exception) else exc
        raise cause from None
    reporter.send({"type": "started"})
    print(f"bot {bot['id']} running", flush=True)
    while True:
        time.sleep(BOT_WATCH_SECONDS)
        try:
            state = ray.get(actor.status.remote(), timeout=60)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            reporter.send({"type": "stopped", "message": "the bot's strategy actor was stopped"})
            return
        if state["error"]:
            raise RuntimeError(state["error"])


def main() -> int:
    config = json.loads(Path(CONFIG_FILE).read_text())
    reporter = Reporter(os.environ["ATP_API_URL"], os.environ["ATP_JOB_TOKEN"], config["job_id"])
    try:
        load_package(config)
        if config["kind"] != "bot":  # a bot is started once its actor is ready
            reporter.send({"type": "started"})
        if config["kind"] == "backtest":
            run_backtest_job(config, reporter)
        elif config["kind"] == "inspect":
            run_inspect_job(config, reporter)
        elif config["kind"] == "train":
            run_train_job(config, reporter)
        elif config["kind"] == "bot":
            run_bot_job(config, reporter)
        else:
            run_optimization_job(config, reporter)
    except Invalid as exc:
        print(f"job failed: {exc.message}", file=sys.stderr, flush=True)
        reporter.send({"type": "failed", "message": exc.message, "field": exc.field})
        return 1
    except Exception as exc:  # tenant code may raise anything: report it, then fail the job
        trace = traceback.format_exc()
        print(trace, file=sys.stderr, flush=True)
        tail = "\n".join(trace.strip().splitlines()[-TRACE_LINES:])
        reporter.send({"type": "failed", "message": f"{type(exc).__name__}: {exc}\n{tail}"[-6000:]})
        return 1
    print("job finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
