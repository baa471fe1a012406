"""Awaiting actor calls at the boundary: our errors come back as themselves.

Ray wraps an exception raised inside an actor in `RayTaskError`; `call` unwraps it so a
domain error (`Invalid`, `Conflict`, ...) reaches the gateway's error table unchanged, and
turns a dead or unreachable actor into `Unavailable` (503).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from ray.exceptions import RayActorError, RayTaskError

from trading.errors import AtpError, Unavailable

T = TypeVar("T")


async def call(ref: Awaitable[T]) -> T:
    try:
        return await ref
    except RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, AtpError):
            raise cause from None
        raise Unavailable(f"the trading runtime failed: {type(cause).__name__}",
                          code="runtime_error") from exc
    except RayActorError as exc:
        raise Unavailable("the trading runtime is restarting; retry", code="runtime_restarting") \
            from exc
