"""A live bot's model scores: asked of the tenant's model endpoint, bar by bar.

`EndpointScores` is the `trading.strategy.Predictions` of a live bot whose strategy
`uses_model`. The strategy's hook is synchronous, so the runner awaits `observe(bar)`
before it: the bar joins the symbol's recent bars, the features window ending at it is
computed here (`models.signals.latest_window`), and the multiplexed model endpoint is
asked for its score under the key ``<tenant>/<model>@<version>`` (the version was fixed
when the bot started). `score(symbol, ts)` then answers for that bar.

A model that is gone or corrupt (`NotFound`, `Conflict`) is the bot's error; an endpoint
that fails otherwise (a replica restarting) costs the bar its score, and the bot logs it
and goes on.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from models.features import FeatureSpec
from models.serving import MODELS_APP, MODELS_DEPLOYMENT, model_key
from models.signals import latest_window
from trading.errors import AtpError, Unavailable
from trading.instruments import Bar

MIN_BARS = 300  # bars kept per symbol at least: EMA features settle over a longer run


async def call_endpoint(handle: Any, method: str, *args: Any) -> Any:
    """Call the model endpoint; its domain errors (model_corrupt, ...) come back as themselves."""
    import ray

    try:
        return await getattr(handle, method).remote(*args)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, AtpError):
            raise cause from None
        raise Unavailable(f"the model endpoint failed: {type(cause or exc).__name__}",
                          code="model_endpoint_failed") from None


def endpoint_handle(tenant_id: uuid.UUID, name: str, version: int) -> Any:
    """A handle on the model endpoint routed to one model of the tenant."""
    from ray import serve

    return serve.get_deployment_handle(MODELS_DEPLOYMENT, app_name=MODELS_APP).options(
        multiplexed_model_id=model_key(tenant_id, name, version))


class EndpointScores:
    """Scores of one model for a live bot's bars (see the module's doc)."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._spec: FeatureSpec | None = None
        self._lookback = 0
        self._bars: dict[str, deque[Bar]] = {}
        self._latest: dict[str, tuple[datetime, float]] = {}

    async def prepare(self) -> int:
        """Learn the model's window and features from the endpoint; return the bars it needs."""
        shape = await call_endpoint(self._handle, "describe")
        self._spec = FeatureSpec.from_json(shape["features"])
        self._lookback = int(shape["lookback"])
        return self.history

    @property
    def history(self) -> int:
        """Bars kept per symbol."""
        need = (self._spec.warmup if self._spec else 0) + self._lookback
        return max(MIN_BARS, 2 * need)

    def preload(self, bars: Sequence[Bar]) -> None:
        """Recent bars (oldest first), read from the store at a (re)start."""
        for bar in bars:
            self._remember(bar)

    def _remember(self, bar: Bar) -> deque[Bar]:
        kept = self._bars.setdefault(bar.symbol, deque(maxlen=self.history))
        if not kept or bar.ts > kept[-1].ts:
            kept.append(bar)
        return kept

    async def observe(self, bar: Bar) -> None:
        """Take the new bar and ask the endpoint for the score at it."""
        if self._spec is None:
            await self.prepare()
        assert self._spec is not None
        kept = self._remember(bar)
        if kept[-1].ts != bar.ts:
            return  # a bar seen before: its score (if any) stands
        window = latest_window(self._spec, self._lookback, list(kept))
        if window is None:
            return
        (value,) = await call_endpoint(self._handle, "predict", [window.tolist()])
        self._latest[bar.symbol] = (bar.ts, float(value))

    def score(self, symbol: str, ts: datetime) -> float | None:
        latest = self._latest.get(symbol)
        return latest[1] if latest is not None and latest[0] == ts else None
