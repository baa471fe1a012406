"""Training a tenant's model: the request, validated completely before anything runs.

`parse_training` checks a ``POST /v1/models`` body: the model's name, architecture and
hyperparameters (`models.hyper.check_hyper`), features (`models.features.FeatureSpec`),
label, one symbol and its data (as a backtest's), the window length, the training
settings, the time split, and an optional search space over hyperparameters and training
settings — every value a range or choice may take is checked like a fixed one. The job
(`actors.job_main`, kind ``train``) then runs a Ray Tune search (ASHA, trials in the
tenant's namespace within `concurrency`) when there is a search space, trains the final
model with the best settings under the seed, scores it on the test part (no trial saw
it), backtests its signal there, and reports the artifact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from actors.research import (
    MIB,
    RUN_KEYS,
    RunSpec,
    _integer,
    _number,
    _object,
    _refuse_unknown,
    parse_run,
)
from models.datasets import check_label
from models.features import FeatureSpec
from models.hyper import MAX_LOOKBACK, check_hyper
from models.registry import check_name
from trading.errors import Invalid

TRAINING = {"epochs": (20, 1, 1000, int), "batch_size": (256, 1, 65_536, int), "lr": (1e-3, 1e-6, 1.0, float),
            "patience": (3, 1, 1000, int), "weight_decay": (0.0, 0.0, 1.0, float)}
TRAINING_KEYS = ("name", "architecture", "hyper", "features", "label", "lookback", "training", "split",
                 "search_space", "num_trials", "concurrency", "cpus_per_trial", "memory_per_trial_mb", "seed")
MAX_TRIALS = 200


@dataclass(frozen=True)
class TrainSpec:
    name: str
    architecture: str
    hyper: dict[str, Any]
    features: FeatureSpec
    label: dict[str, Any]
    lookback: int
    training: dict[str, Any]
    split: dict[str, float]
    search_space: dict[str, Any]
    num_trials: int
    concurrency: int
    cpus_per_trial: float
    memory_per_trial: int
    seed: int
    run: RunSpec

    @property
    def total_cpus(self) -> float:
        return self.run.num_cpus + (self.concurrency * self.cpus_per_trial if self.search_space else 0)

    @property
    def total_memory(self) -> int:
        return self.run.memory_bytes + (self.concurrency * self.memory_per_trial if self.search_space else 0)

    def config(self) -> dict[str, Any]:
        """The job's request (``atp_job.json``)."""
        return {**self.run.config(), "model": self.name, "resources_cpus": self.run.num_cpus,
                "architecture": self.architecture, "hyper": self.hyper,
                "features": self.features.to_json(), "label": self.label,
                "lookback": self.lookback, "training": self.training, "split": self.split,
                "search_space": self.search_space, "num_trials": self.num_trials,
                "concurrency": self.concurrency, "cpus_per_trial": self.cpus_per_trial,
                "memory_per_trial": self.memory_per_trial, "seed": self.seed}

    def request(self) -> dict[str, Any]:
        """What the registry keeps of the request (no resources)."""
        config = self.config()
        for key in ("concurrency", "cpus_per_trial", "memory_per_trial", "resources_cpus"):
            config.pop(key)
        return config


def _training_value(name: str, value: Any) -> Any:
    _, low, high, kind = TRAINING[name]
    if kind is int:
        return _integer(value, f"training.{name}", int(low), int(high))
    return _number(value, f"training.{name}", float(low), float(high))


def _check_value(architecture: str, name: str, value: Any, field: str) -> Any:
    """One value of a searched (or fixed) setting, checked as the job will use it."""
    try:
        if name in TRAINING:
            return _training_value(name, value)
        return check_hyper(architecture, {name: value})[name]
    except Invalid as exc:
        raise Invalid(f"{field}: {exc.message}", field=field) from None


def _search_space(architecture: str, space: Any) -> dict[str, Any]:
    if space is None:
        return {}
    if not isinstance(space, Mapping):
        raise Invalid("search_space must be an object", field="search_space")
    known = set(check_hyper(architecture, {})) | set(TRAINING) - {"epochs", "patience"}
    out: dict[str, Any] = {}
    for name, spec in space.items():
        field = f"search_space.{name}"
        if name not in known:
            raise Invalid(f"{name!r} cannot be searched; searchable: {', '.join(sorted(known))}", field=field)
        if not isinstance(spec, Mapping) or spec.get("type") not in ("int", "float", "log_float", "choice"):
            raise Invalid(f"{field}.type must be int, float, log_float or choice", field=f"{field}.type")
        kind = spec["type"]
        if kind == "choice":
            _refuse_unknown(spec, ("type", "values"), f"{field}.")
            values = spec.get("values")
            if not isinstance(values, list) or not 1 <= len(values) <= 100:
                raise Invalid(f"{field}.values must be a list of 1 to 100 values", field=f"{field}.values")
            out[name] = {"type": "choice",
                         "values": [_check_value(architecture, name, v, f"{field}.values") for v in values]}
            continue
        _refuse_unknown(spec, ("type", "low", "high"), f"{field}.")
        low = _check_value(architecture, name, spec.get("low"), f"{field}.low")
        high = _check_value(architecture, name, spec.get("high"), f"{field}.high")
        if isinstance(low, list) or low > high:
            raise Invalid(f"{field}.low must be a number not above high", field=f"{field}.low")
        if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
            raise Invalid(f"{field}: an int range needs integer bounds", field=f"{field}.type")
        if kind == "log_float" and low <= 0:
            raise Invalid(f"{field}.low must be positive for log_float", field=f"{field}.low")
        out[name] = {"type": kind, "low": low, "high": high}
    return out


def parse_training(body: Mapping[str, Any]) -> TrainSpec:
    """Validate a training request (see the module docstring); `Invalid` names the field."""
    if not isinstance(body, Mapping):
        raise Invalid("the request must be an object", field=None)
    _refuse_unknown(body, (*TRAINING_KEYS, "symbol", *[k for k in RUN_KEYS if k not in
                                                        ("strategy", "package", "params", "symbols")]))
    for key in ("name", "architecture", "symbol", "from", "to"):
        if key not in body:
            raise Invalid(f"{key} is required", field=key)
    name = check_name(body["name"])
    architecture = body["architecture"]
    hyper = check_hyper(architecture, dict(_object(body.get("hyper"), "hyper")))
    features = FeatureSpec.from_json(_object(body.get("features"), "features"))
    label = dict(_object(body.get("label"), "label") or {"kind": "direction", "horizon": 5})
    _refuse_unknown(label, ("kind", "horizon"), "label.")
    label.setdefault("kind", "direction")
    label.setdefault("horizon", 5)
    try:
        check_label(label["kind"], label["horizon"])
    except Invalid as exc:
        raise Invalid(exc.message, field=f"label.{exc.field}") from None
    lookback = _integer(body.get("lookback", 16), "lookback", 1, MAX_LOOKBACK)
    given = _object(body.get("training"), "training")
    _refuse_unknown(given, tuple(TRAINING), "training.")
    training = {k: _training_value(k, given.get(k, default)) for k, (default, *_rest) in TRAINING.items()}
    split = dict(_object(body.get("split"), "split") or {"train": 0.7, "validation": 0.15})
    _refuse_unknown(split, ("train", "validation"), "split.")
    fractions = {k: _number(split.get(k, d), f"split.{k}", 0.05, 0.9) for k, d in
                 (("train", 0.7), ("validation", 0.15))}
    if fractions["train"] + fractions["validation"] >= 0.95:
        raise Invalid("split.train + split.validation must leave at least 5 % for the test part",
                      field="split.validation")
    space = _search_space(architecture, body.get("search_space"))
    run_body = {k: v for k, v in body.items() if k in RUN_KEYS}
    run = parse_run({**run_body, "symbols": [body["symbol"]]}, None, default_cpus=1.0,
                    strategy=f"model:{name}")
    bars = (run.end - run.start).total_seconds() / run.data.get("interval_seconds", math.inf)
    if run.data["source"] == "synthetic" and bars < features.warmup + lookback + label["horizon"] + 50:
        raise Invalid(f"the period holds about {int(bars)} bars; these features, lookback and horizon need "
                      f"more than {features.warmup + lookback + label['horizon'] + 50}", field="to")
    return TrainSpec(
        name=name, architecture=architecture, hyper=hyper, features=features, label=label, lookback=lookback,
        training=training, split=fractions, search_space=space,
        num_trials=_integer(body.get("num_trials", 8), "num_trials", 1, MAX_TRIALS),
        concurrency=_integer(body.get("concurrency", 1), "concurrency", 1, 32),
        cpus_per_trial=_number(body.get("cpus_per_trial", 0.5), "cpus_per_trial", 0.05, 16),
        memory_per_trial=int(_number(body.get("memory_per_trial_mb", 768), "memory_per_trial_mb", 256,
                                     65_536)) * MIB,
        seed=_integer(body.get("seed", 0), "seed", 0, 2**31 - 1), run=run)
