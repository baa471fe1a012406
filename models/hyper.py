"""Architectures' hyperparameters: names, defaults and checks, without importing torch.

The gateway validates training requests with `check_hyper`; `models.networks` builds the
networks from the same tables.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from trading.errors import Invalid

MAX_FEATURES = 1024
MAX_LOOKBACK = 1024


def _integer(value: Any, name: str, least: int, most: int) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        number = None
    if isinstance(value, bool) or number is None or not least <= number <= most:
        raise Invalid(f"{name} must be an integer from {least} to {most}", field=name)
    return number


def _dropout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating) \
            or not 0 <= value < 1:
        raise Invalid("dropout must be a number in [0, 1)", field="dropout")
    return float(value)


def _hidden(value: Any) -> list[int]:
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple) \
            or not 1 <= len(value) <= 8:
        raise Invalid("hidden must be a list of 1 to 8 layer sizes", field="hidden")
    return [_integer(size, "hidden", 1, 4096) for size in value]


HyperTable = dict[str, tuple[Any, Callable[[Any], Any]]]  # name: (default, check)

HYPER: dict[str, HyperTable] = {
    "mlp": {"hidden": ((64, 32), _hidden), "dropout": (0.1, _dropout)},
    "tcn": {
        "channels": (16, lambda v: _integer(v, "channels", 1, 512)),
        "levels": (3, lambda v: _integer(v, "levels", 1, 10)),
        "kernel_size": (3, lambda v: _integer(v, "kernel_size", 2, 16)),
        "dropout": (0.1, _dropout),
    },
}


def check_hyper(architecture: str, hyper: Mapping[str, Any]) -> dict[str, Any]:
    """Return `hyper` validated and completed with defaults; `Invalid` names a bad one."""
    if architecture not in HYPER:
        raise Invalid(f"unknown architecture {architecture!r}; known: {', '.join(HYPER)}",
                      field="architecture")
    table = HYPER[architecture]
    for name in hyper:
        if name not in table:
            raise Invalid(f"{architecture} has no hyperparameter {name!r}; it has "
                          f"{', '.join(table)}", field=str(name))
    return {name: check(hyper.get(name, default)) for name, (default, check) in table.items()}
