"""`Runner`: the agent's market clock, its running bots, and the commands that change them.

The clock is market time: each `step` makes the synthetic bars of the clock's time for
the symbols of every running bot (`trading.data.SyntheticSource`, seeded, so the same
database always sees the same market), feeds them to the bots, and moves the clock on by
one bar interval; `run` steps at `speed` bars per wall-clock second until told to stop.
The clock is stored, so a restarted agent continues where it stopped; a new database's
clock starts at `start` (default: now), on the interval's grid.

Everything a step or a command changes is written in one outbox transaction: the events,
each bot's working state (cash, positions, open orders, its last bar time) and the clock,
or, for a command, its result. A bot never processes a bar time it already stored, so a
step replayed after a crash makes the same client order ids and no duplicate events.
Nothing needs a connection: the client sends what the outbox holds when it can.

Commands (protocol v1): ``start_bot`` and ``stop_bot`` (args ``bot``), ``kill_switch``
(args ``reason``: every bot stops and every open order is canceled). Stopping a bot also
cancels its open orders, since nothing works them while it is stopped. A command id seen
before is answered with the stored result and not done again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from agent.bot import LocalBot
from agent.config import BotConfig
from agent.outbox import CommandResult, Outbox, StoredBot
from agent.views import log_view
from trading.data import DEFAULT_LOT, DEFAULT_TICK, EPOCH, SyntheticSource
from trading.errors import AtpError, Invalid, NotFound
from trading.instruments import Bar, Instrument
from trading.values import ZERO

log = logging.getLogger(__name__)

COMMANDS = ("start_bot", "stop_bot", "kill_switch")
CHUNK = 256  # bar times made at once


def on_grid(ts: datetime, interval: timedelta) -> datetime:
    """Return `ts` rounded down to the bar grid (``EPOCH + k * interval``)."""
    return EPOCH + ((ts.astimezone(UTC) - EPOCH) // interval) * interval


class _Feed:
    """Bars of the synthetic source, made a chunk of bar times at a time."""

    def __init__(self, source: SyntheticSource) -> None:
        self._source = source
        self._symbols: frozenset[str] = frozenset()
        self._start = self._end = EPOCH
        self._bars: dict[datetime, list[Bar]] = {}

    def at(self, ts: datetime, symbols: frozenset[str]) -> dict[str, Bar]:
        if not symbols <= self._symbols or not self._start <= ts < self._end:
            self._symbols = symbols
            self._start, self._end = ts, ts + CHUNK * self._source.interval
            self._bars = {}
            for bar in self._source.bars(sorted(symbols), self._start, self._end):
                self._bars.setdefault(bar.ts, []).append(bar)
        return {b.symbol: b for b in self._bars.get(ts, []) if b.symbol in symbols}

    def before(self, symbols: Sequence[str], end: datetime, count: int) -> list[Bar]:
        return list(self._source.bars(list(symbols), end - count * self._source.interval, end))


class Runner:
    """The agent's bots on a synthetic market (see the module docstring)."""

    def __init__(self, outbox: Outbox, *, seed: int = 0, interval: timedelta = timedelta(minutes=1),
                 speed: float = 1.0, start: datetime | None = None, fee_bps: Decimal = ZERO,
                 slippage_bps: Decimal = ZERO) -> None:
        """Load the clock and the running bots from `outbox`."""
        if not isinstance(interval, timedelta) or interval < timedelta(seconds=1) \
                or interval % timedelta(seconds=1):
            raise Invalid("interval must be a whole number of seconds, at least 1", field="interval")
        if isinstance(speed, bool) or not isinstance(speed, int | float) or not speed > 0:
            raise Invalid("speed must be a positive number of bars per second", field="speed")
        self.outbox = outbox
        self.source = SyntheticSource(seed=seed, interval=interval)
        self.interval = interval
        self.speed = float(speed)
        self.fee_bps, self.slippage_bps = fee_bps, slippage_bps
        self.clock = outbox.clock() or on_grid(start or datetime.now(UTC), interval)
        self._feed = _Feed(self.source)
        self._bots: dict[str, LocalBot] = {}
        self._stale = False
        self._load()

    @property
    def running(self) -> list[str]:
        """Return the names of the running bots."""
        return sorted(self._bots)

    def bot(self, name: str) -> LocalBot | None:
        """Return the running bot called `name`, or None."""
        return self._bots.get(name)

    # -- stepping -----------------------------------------------------------------------

    def step(self) -> datetime:
        """Process one bar time for every running bot; return that time."""
        if self._stale:
            self._load()
        ts = self.clock
        try:
            with self.outbox.transaction():
                if self._bots:
                    bars = self._feed.at(ts, frozenset(s for b in self._bots.values() for s in b.symbols))
                    for name in sorted(self._bots):
                        bot = self._bots[name]
                        if bot.last_bar_at is not None and ts <= bot.last_bar_at:
                            continue
                        bot.on_step(ts, [bars[s] for s in bot.symbols if s in bars])
                        if bot.error is not None:
                            self._halt(bot, ts)
                        else:
                            self.outbox.save_bot_state(name, bot.state())
                self.outbox.set_clock(ts + self.interval)
        except Exception:
            self._stale = True  # the bots in memory may be ahead of what was stored
            raise
        self.clock = ts + self.interval
        return ts

    async def run(self, stop: asyncio.Event) -> None:
        """Step at `speed` bars per second until `stop` is set; a failed step is logged and retried."""
        loop = asyncio.get_running_loop()
        period = 1.0 / self.speed
        due = loop.time()
        while not stop.is_set():
            try:
                self.step()
            except Exception:
                log.exception("a market step failed; trying again at the next tick")
            due = max(due + period, loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), due - loop.time())

    # -- bots -------------------------------------------------------------------------------

    def configure(self, bots: Sequence[tuple[BotConfig, str | None]]) -> None:
        """Apply a configuration file's bots: save each, then start or stop it as asked.

        A bot without a status keeps the one it has (a new bot starts); a running bot whose
        configuration changed restarts with the new one, keeping its positions and orders.
        Bots absent from the list are left as they are.
        """
        for config, status in bots:
            config.validate()
            with self.outbox.transaction():
                known = self.outbox.bot(config.name)
                self.outbox.save_bot(config, status=known.status if known else "stopped")
                wanted = status or (known.status if known else "running")
                if config.name in self._bots and known is not None and known.config != config:
                    del self._bots[config.name]
                if wanted == "running" and config.name not in self._bots:
                    self.start_bot(config.name)
                elif wanted == "stopped" and config.name in self._bots:
                    self.stop_bot(config.name, reason="configured_stopped")

    def start_bot(self, name: str) -> str:
        """Start the configured bot `name`; return what happened, in words."""
        stored = self._stored(name)
        if name in self._bots:
            return f"bot {name} is already running"
        bot = self._build(stored)
        with self.outbox.transaction():
            self.outbox.set_bot_status(name, "running")
            self._log(f"bot {name} started", account=bot.account)
            self._activate(bot)
        return f"bot {name} started" if name in self._bots else f"bot {name} failed: {bot.error}"

    def stop_bot(self, name: str, reason: str = "bot_stopped") -> str:
        """Stop the bot `name` and cancel its open orders; return what happened, in words."""
        stored = self._stored(name)
        bot = self._bots.get(name)
        if bot is None:
            if stored.status == "running":  # it could not be loaded: mark it stopped
                self.outbox.set_bot_status(name, "stopped", stored.error)
            return f"bot {name} is already stopped"
        with self.outbox.transaction():
            canceled = bot.stop(self.clock, reason)
            self.outbox.save_bot_state(name, bot.state())
            self.outbox.set_bot_status(name, "stopped", bot.error)
            self._log(f"bot {name} stopped ({reason}); {canceled} open order(s) canceled",
                      account=bot.account)
            del self._bots[name]
        return f"bot {name} stopped; {canceled} open order(s) canceled"

    def kill_switch(self, reason: str) -> str:
        """Stop every bot and cancel every open order; return what happened, in words."""
        with self.outbox.transaction():
            self._log(f"kill switch: {reason or 'no reason given'}", level="warning")
            names = sorted(self._bots)
            canceled = 0
            for name in names:
                bot = self._bots.pop(name)
                canceled += bot.stop(self.clock, "kill_switch")
                self.outbox.save_bot_state(name, bot.state())
                self.outbox.set_bot_status(name, "stopped", bot.error)
                self._log(f"bot {name} stopped (kill switch)", account=bot.account)
        return f"kill switch: {len(names)} bot(s) stopped, {canceled} open order(s) canceled"

    # -- commands ---------------------------------------------------------------------------

    def execute(self, command_id: str, command: str, args: Mapping[str, Any]) -> CommandResult:
        """Do a platform command once; a command id seen before gets its stored result again."""
        known = self.outbox.command_result(command_id)
        if known is not None:
            return known
        try:
            with self.outbox.transaction():
                result = self._dispatch(command, args)
                self.outbox.record_command(command_id, command, args, result)
        except Exception as exc:
            log.exception("command %s (%s) failed", command_id, command)
            self._stale = True
            result = CommandResult("failed", f"the agent failed: {type(exc).__name__}: {exc}")
            try:
                self.outbox.record_command(command_id, command, args, result)
            except Exception:
                log.exception("cannot record the result of command %s", command_id)
        return result

    def _dispatch(self, command: str, args: Mapping[str, Any]) -> CommandResult:
        try:
            if command == "kill_switch":
                reason = args.get("reason", "")
                if not isinstance(reason, str):
                    raise Invalid("args.reason must be a string", field="args.reason")
                return CommandResult("done", self.kill_switch(reason))
            if command in ("start_bot", "stop_bot"):
                name = args.get("bot")
                if not isinstance(name, str) or not name:
                    raise Invalid("args.bot must name a bot", field="args.bot")
                detail = self.start_bot(name) if command == "start_bot" else self.stop_bot(name)
                ok = command == "stop_bot" or name in self._bots
                return CommandResult("done" if ok else "failed", detail)
            raise Invalid(f"unknown command {command!r}; known: {', '.join(COMMANDS)}", field="command")
        except AtpError as exc:
            return CommandResult("failed", exc.message)

    # -- internals --------------------------------------------------------------------------

    def _stored(self, name: str) -> StoredBot:
        stored = self.outbox.bot(name)
        if stored is None:
            raise NotFound(f"unknown bot {name!r}", field="args.bot")
        return stored

    def _instruments(self, symbols: Sequence[str]) -> dict[str, Instrument]:
        known = self.source.instruments
        return {s: known.get(s) or Instrument(s, DEFAULT_TICK, DEFAULT_LOT) for s in symbols}

    def _build(self, stored: StoredBot) -> LocalBot:
        config = stored.config
        return LocalBot(config, agent_id=self.outbox.agent_id, instruments=self._instruments(config.symbols),
                        emit=self.outbox.append, state=self.outbox.bot_state(config.name),
                        fee_bps=self.fee_bps, slippage_bps=self.slippage_bps)

    def _activate(self, bot: LocalBot) -> None:
        """Preload the bot's history, run `on_start` and add it to the running bots (in a transaction)."""
        bot.preload(self._feed.before(bot.symbols, self.clock, bot.strategy.warmup))
        bot.start(self.clock)
        if bot.error is not None:
            self._halt(bot, self.clock)
            return
        self.outbox.save_bot_state(bot.name, bot.state())
        self._bots[bot.name] = bot

    def _halt(self, bot: LocalBot, ts: datetime) -> None:
        """Stop a bot whose strategy failed, keeping the error."""
        canceled = bot.stop(ts, "strategy_error")
        self.outbox.save_bot_state(bot.name, bot.state())
        self.outbox.set_bot_status(bot.name, "stopped", bot.error)
        self._log(f"bot {bot.name} stopped by its strategy's error; {canceled} open order(s) canceled",
                  account=bot.account, level="error")
        self._bots.pop(bot.name, None)

    def _load(self) -> None:
        """(Re)build every running bot from the database."""
        self._bots = {}
        for stored in self.outbox.bots():
            if stored.status != "running":
                continue
            try:
                bot = self._build(stored)
            except AtpError as exc:  # e.g. a strategy this version does not know
                with self.outbox.transaction():
                    self.outbox.set_bot_status(stored.config.name, "stopped", exc.message)
                    self._log(f"bot {stored.config.name} cannot start: {exc.message}",
                              account=f"agent:{stored.config.name}", level="error")
                continue
            with self.outbox.transaction():
                self._activate(bot)
        self._stale = False

    def _log(self, message: str, *, account: str | None = None, level: str = "info") -> None:
        self.outbox.append("log", log_view(message, account=account, level=level, ts=self.clock))
