"""Reconnect delays: exponential backoff with full jitter.

The n-th consecutive failure waits a uniformly random time in
``[0, min(maximum, initial * 2**n))`` (n from 0), so many agents cut off together do not
come back together. A connection that lasted `reset_after` seconds resets the count; a
refused credential (close code 4401 or 4403) waits the maximum itself, and the failures
after it draw from the whole range up to the maximum until a connection lasts.
"""

from __future__ import annotations

import random

from agent.config import BackoffConfig


class Backoff:
    """The delays before each reconnect (see the module docstring)."""

    def __init__(self, config: BackoffConfig | None = None, *, rng: random.Random | None = None) -> None:
        """Use `config` (defaults: 0.5 s doubling to 30 s) and `rng` for the jitter."""
        self.config = config or BackoffConfig()
        self._rng = rng or random.SystemRandom()
        self.attempt = 0
        self.delays: list[float] = []  # every delay handed out, newest last (bounded)

    def next_delay(self) -> float:
        """Return the delay before the next try and count the failure."""
        ceiling = min(self.config.maximum, self.config.initial * 2.0 ** min(self.attempt, 64))
        self.attempt += 1
        return self._record(self._rng.uniform(0.0, ceiling))

    def refused(self) -> float:
        """Return the delay after a refused credential: the maximum; later ceilings stay at it."""
        self.attempt = max(self.attempt, 64)
        return self._record(self.config.maximum)

    def connected_for(self, seconds: float) -> None:
        """Note how long a connection lasted; a long enough one resets the delays."""
        if seconds >= self.config.reset_after:
            self.attempt = 0

    def _record(self, delay: float) -> float:
        self.delays.append(delay)
        del self.delays[:-100]
        return delay
