"""Request bodies of the research routes, for the OpenAPI document.

The routes read their JSON themselves (bounded, then validated completely by
`actors.research`, so each error names the exact field); these models only describe the
bodies in ``/docs``. Keep them flat (no nested models) so their JSON schema is inline.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route whose JSON body `model` describes."""
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": model.model_json_schema()}}}}


class BacktestBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    strategy: str = Field(description="a built-in strategy (GET /v1/strategies) or one of `package`'s")
    package: str | None = Field(default=None, description="an uploaded strategy package")
    symbols: list[str] = Field(description="1 to 20 symbols")
    from_: str = Field(alias="from", description="ISO-8601 start (inclusive; UTC when naive)")
    to: str = Field(description="ISO-8601 end (exclusive)")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="strategy parameters; defaults fill the rest")
    data: dict[str, Any] = Field(default_factory=lambda: {"source": "synthetic", "seed": 7,
                                                          "interval": "1m"},
                                 description='{"source": "synthetic", "seed", "interval": '
                                             '1m|5m|15m|1h|4h|1d} '
                                             'or {"source": "market"} (the platform\'s stored bars)')
    capital: str | float = Field(default="100000", description="starting cash")
    fee_bps: str | float = Field(default=0, description="fee in basis points of notional")
    slippage_bps: str | float = Field(default=0, description="slippage in basis points")
    resources: dict[str, float] = Field(default_factory=dict,
                                        description="the job driver's reservation: num_cpus (0.5; 0.25 for "
                                                    "a search), memory_mb (1024)")


class OptimizationBody(BacktestBody):
    search_space: dict[str, dict[str, Any]] = Field(
        description='{param: {"type": "int"|"float", "low", "high"} | {"type": "choice", "values": [...]}}')
    objective: Literal["sharpe", "calmar", "return"] = "sharpe"
    max_drawdown: float | None = Field(default=None,
                                       description="trials deeper than this fraction are infeasible")
    in_sample: float = Field(default=0.7, description="the share of the period trials see (0.1 to 0.95)")
    num_trials: int = Field(default=20, description="1 to 1000")
    concurrency: int = Field(default=1, description="trials at once; each reserves cpus_per_trial")
    cpus_per_trial: float = 0.5
    memory_per_trial_mb: int = 512
    seed: int = Field(default=0, description="the search's random seed")


class JobBody(OptimizationBody):
    kind: Literal["backtest", "optimization"] = Field(description="what the job runs")
    package: str = Field(description="the uploaded strategy package")
    search_space: dict[str, dict[str, Any]] | None = Field(  # type: ignore[assignment]
        default=None, description="for kind optimization")
