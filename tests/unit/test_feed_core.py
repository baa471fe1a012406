"""FeedCore without Ray: batching, symbol routing, dead subscribers, pacing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from actors.feed import FeedCore, Pacer, align, feed_instruments, feed_options
from trading.data import SyntheticSource
from trading.errors import Invalid
from trading.instruments import Bar

T0 = datetime(2030, 5, 17, 12, 0, 30, tzinfo=UTC)  # 30 s into a minute
MINUTE = timedelta(minutes=1)


class Dead(Exception):
    """What a fake subscriber raises once it has 'died'."""


class FakeWriter:
    def __init__(self, fail_times: int = 0) -> None:
        self.batches: list[list[Bar]] = []
        self.stored: set[tuple[str, datetime]] = set()
        self.fail_times = fail_times

    async def __call__(self, bars: Sequence[Bar]) -> int:
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("database down")
        self.batches.append(list(bars))
        new = {(b.symbol, b.ts) for b in bars} - self.stored
        self.stored |= new
        return len(new)


class _Method:
    def __init__(self, owner: FakeSubscriber) -> None:
        self.owner = owner

    def remote(self, bars: list[Bar]) -> Any:
        return self.owner.call(bars)


class FakeSubscriber:
    """Mimics a Ray actor handle: ``on_bars.remote(bars)`` returns an awaitable."""

    def __init__(self, *, error: Exception | None = None, gate: asyncio.Event | None = None) -> None:
        self.received: list[list[Bar]] = []
        self.error = error
        self.gate = gate
        self.on_bars = _Method(self)

    async def call(self, bars: list[Bar]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        self.received.append(bars)

    @property
    def bars(self) -> list[Bar]:
        return [b for batch in self.received for b in batch]


class FakeClock:
    def __init__(self, now: datetime = T0) -> None:
        self.wall = 1000.0
        self.start = now
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.wall - 1000.0)

    def monotonic(self) -> float:
        return self.wall

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.wall += seconds
        await asyncio.sleep(0)


def make_core(writer: FakeWriter | None = None, clock: FakeClock | None = None,
              symbols: Sequence[str] = ("AAPL", "BTC-USD"), batch_size: int = 4,
              speed: float = 60.0, **kwargs: Any) -> tuple[FeedCore, FakeWriter, FakeClock]:
    writer = writer or FakeWriter()
    clock = clock or FakeClock()
    core = FeedCore(writer=writer, source=SyntheticSource(seed=3, interval=MINUTE),
                    symbols=symbols, interval=MINUTE, speed=speed, batch_size=batch_size,
                    is_dead=lambda exc: isinstance(exc, Dead), now=clock.now,
                    monotonic=clock.monotonic, sleep=clock.sleep, retry_seconds=0.5, **kwargs)
    return core, writer, clock


def bar(symbol: str, minute: int) -> Bar:
    ts = datetime(2030, 1, 1, tzinfo=UTC) + minute * MINUTE
    return Bar(symbol, ts, Decimal(10), Decimal(11), Decimal(9), Decimal("10.5"), Decimal(5))


# -- pacing math ---------------------------------------------------------------------------------

def test_align_floors_to_the_interval_grid() -> None:
    assert align(T0, MINUTE) == datetime(2030, 5, 17, 12, 0, tzinfo=UTC)
    assert align(datetime(2030, 5, 17, 12, 0, tzinfo=UTC), MINUTE) == \
        datetime(2030, 5, 17, 12, 0, tzinfo=UTC)
    assert align(T0, timedelta(hours=1)) == datetime(2030, 5, 17, 12, tzinfo=UTC)
    assert align(T0, timedelta(seconds=7)).timestamp() % 7 == 0


def test_pacer_runs_bar_time_at_speed() -> None:
    pacer = Pacer(T0, 50.0, speed=120.0)
    assert pacer.clock(50.0) == T0
    assert pacer.clock(51.5) == T0 + timedelta(minutes=3)
    assert pacer.clock(10.0) == T0  # never before the anchor
    assert pacer.wall_at(T0 + timedelta(minutes=3)) == pytest.approx(51.5)


async def test_bars_are_due_when_they_close() -> None:
    core, writer, clock = make_core(speed=60.0)  # one bar-minute per wall second
    core.anchor()
    assert core.cursor == datetime(2030, 5, 17, 12, 0, tzinfo=UTC)
    assert await core.step() == 0  # the 12:00 bar is still open (12:00:30)
    assert core.seconds_until_due() == pytest.approx(0.5)  # 30 bar-seconds at 60x
    clock.wall += 0.5
    assert await core.step() == 2  # 12:00 closed: one bar per symbol
    assert [(b.symbol, b.ts.minute) for b in writer.batches[0]] == [("AAPL", 0), ("BTC-USD", 0)]
    assert core.cursor == datetime(2030, 5, 17, 12, 1, tzinfo=UTC)
    assert core.seconds_until_due() == pytest.approx(1.0)
    clock.wall += 0.99
    assert await core.step() == 0


async def test_backlog_is_written_in_batches_of_at_most_batch_size() -> None:
    core, writer, clock = make_core(batch_size=3, speed=600.0)  # 10 bar-minutes per second
    core.anchor()
    clock.wall += 0.95  # 12:00:30 + 570 s = 12:10:00: bars 12:00 .. 12:09 are due, 20 bars
    total = 0
    while (n := await core.step()) > 0:
        total += n
    assert total == 20
    assert all(len(b) <= 3 for b in writer.batches)
    written = [b for batch in writer.batches for b in batch]
    assert [(b.ts, b.symbol) for b in written] == sorted((b.ts, b.symbol) for b in written)
    assert len({(b.symbol, b.ts) for b in written}) == 20
    assert core.stats()["bars_written"] == 20
    assert core.stats()["last_bar_ts"] == datetime(2030, 5, 17, 12, 9, tzinfo=UTC)
    # the bars are the synthetic source's bars, unchanged
    expected = list(SyntheticSource(seed=3, interval=MINUTE).bars(
        ["AAPL", "BTC-USD"], datetime(2030, 5, 17, 12, tzinfo=UTC),
        datetime(2030, 5, 17, 12, 10, tzinfo=UTC)))
    assert written == expected


async def test_run_loop_sleeps_until_the_next_close_and_stops() -> None:
    core, writer, clock = make_core(speed=60.0)
    await core.start()
    assert core.running
    while len(writer.batches) < 3:
        await asyncio.sleep(0)
    await core.stop()
    assert not core.running
    assert clock.sleeps[0] == pytest.approx(0.5)  # to the first close
    assert [b[0].ts.minute for b in writer.batches[:3]] == [0, 1, 2]
    stopped_at = core.cursor
    assert stopped_at is not None
    # started again (at 60x the bar clock is ahead of now): it resumes, never repeats a bar
    await core.start()
    while len(writer.batches) < 4:
        await asyncio.sleep(0)
    await core.stop()
    assert writer.batches[3][0].ts >= stopped_at
    assert core.stats()["bars_written"] == sum(len(b) for b in writer.batches)


async def test_failed_writes_are_retried_before_the_clock_moves_on() -> None:
    core, writer, clock = make_core(FakeWriter(fail_times=2))
    sub = FakeSubscriber()
    core.subscribe("s", ["AAPL"], sub)
    core.anchor()
    clock.wall += 0.5
    assert await core.step() == 2
    await core.drain()
    assert core.stats()["write_errors"] == 2
    assert clock.sleeps == [0.5, 0.5]
    assert len(writer.batches) == 1 and len(sub.received) == 1  # pushed once, written once


# -- routing -------------------------------------------------------------------------------------

async def test_publish_routes_each_subscriber_its_symbols_and_writes() -> None:
    core, writer, _ = make_core()
    a, b, both = FakeSubscriber(), FakeSubscriber(), FakeSubscriber()
    core.subscribe("a", ["AAPL"], a)
    core.subscribe("b", ["BTC-USD", "MSFT"], b)
    core.subscribe("both", ["AAPL", "BTC-USD"], both)
    batch = [bar("AAPL", 0), bar("BTC-USD", 0), bar("AAPL", 1), bar("ETH-USD", 1)]
    assert await core.publish(batch) == 4
    await core.drain()
    assert writer.batches == [batch]
    assert a.bars == [batch[0], batch[2]]
    assert b.bars == [batch[1]]
    assert both.bars == [batch[0], batch[1], batch[2]]
    # no matching symbol: no push at all
    await core.publish([bar("ETH-USD", 2)])
    await core.drain()
    assert len(a.received) == len(b.received) == len(both.received) == 1
    # again: nothing new is inserted, but the batch is still pushed
    assert await core.publish(batch[:1]) == 0
    await core.drain()
    assert len(a.received) == 2
    stats = core.stats()
    assert (stats["bars_written"], stats["batches"], stats["subscribers"]) == (5, 3, 3)


async def test_unsubscribe_and_resubscribe_replace_the_symbols() -> None:
    core, _, _ = make_core()
    sub = FakeSubscriber()
    core.subscribe("s", ["AAPL"], sub)
    core.subscribe("s", ["MSFT"], sub)
    assert core.subscribers == {"s": frozenset({"MSFT"})}
    await core.publish([bar("AAPL", 0), bar("MSFT", 0)])
    await core.drain()
    assert [b.symbol for b in sub.bars] == ["MSFT"]
    assert core.unsubscribe("s") is True
    assert core.unsubscribe("s") is False
    await core.publish([bar("MSFT", 1)])
    await core.drain()
    assert len(sub.received) == 1


async def test_a_dead_subscriber_is_dropped_and_others_keep_receiving() -> None:
    core, _, _ = make_core()
    alive, dead, flaky = FakeSubscriber(), FakeSubscriber(error=Dead()), \
        FakeSubscriber(error=RuntimeError("on_bars raised"))
    core.subscribe("alive", ["AAPL"], alive)
    core.subscribe("dead", ["AAPL"], dead)
    core.subscribe("flaky", ["AAPL"], flaky)
    await core.publish([bar("AAPL", 0)])
    await core.drain()
    assert set(core.subscribers) == {"alive", "flaky"}  # an application error keeps it
    stats = core.stats()
    assert (stats["dropped_subscribers"], stats["push_errors"]) == (1, 1)
    await core.publish([bar("AAPL", 1)])
    await core.drain()
    assert [b.ts.minute for b in alive.bars] == [0, 1]


async def test_a_push_raising_at_once_counts_too() -> None:
    class Gone:
        class on_bars:  # mimics a handle's method attribute
            @staticmethod
            def remote(_bars: list[Bar]) -> Any:
                raise Dead()

    core, _, _ = make_core()
    core.subscribe("gone", ["AAPL"], Gone())
    await core.publish([bar("AAPL", 0)])
    assert core.subscribers == {}


async def test_a_dead_subscriber_replaced_meanwhile_is_kept() -> None:
    core, _, _ = make_core()
    gate = asyncio.Event()
    old, new = FakeSubscriber(error=Dead(), gate=gate), FakeSubscriber()
    core.subscribe("s", ["AAPL"], old)
    await core.publish([bar("AAPL", 0)])
    core.subscribe("s", ["AAPL"], new)  # re-subscribed before the old push failed
    gate.set()
    await asyncio.sleep(0.01)
    assert core.subscribers == {"s": frozenset({"AAPL"})}
    assert core.stats()["dropped_subscribers"] == 0


async def test_a_slow_subscriber_skips_batches_beyond_the_in_flight_limit() -> None:
    core, _, _ = make_core(max_in_flight=2)
    gate = asyncio.Event()
    slow, fast = FakeSubscriber(gate=gate), FakeSubscriber()
    core.subscribe("slow", ["AAPL"], slow)
    core.subscribe("fast", ["AAPL"], fast)
    for minute in range(4):
        await core.publish([bar("AAPL", minute)])
        for _ in range(3):
            await asyncio.sleep(0)  # the fast subscriber's pushes complete meanwhile
    gate.set()
    await core.drain()
    assert [b.ts.minute for b in slow.bars] == [0, 1]
    assert [b.ts.minute for b in fast.bars] == [0, 1, 2, 3]
    assert core.stats()["skipped_pushes"] == 2


# -- validation ----------------------------------------------------------------------------------

async def test_bad_input_names_the_field() -> None:
    core, _, _ = make_core()
    sub = FakeSubscriber()
    cases: list[tuple[Any, str]] = [
        (lambda: core.subscribe("", ["AAPL"], sub), "subscriber_id"),
        (lambda: core.subscribe("s", "AAPL", sub), "symbols"),
        (lambda: core.subscribe("s", [], sub), "symbols"),
        (lambda: core.subscribe("s", ["aapl"], sub), "symbols"),
        (lambda: core.subscribe("s", ["AAPL"], object()), "handle"),
        (lambda: feed_options(interval=0), "interval"),
        (lambda: feed_options(speed=float("inf")), "speed"),
        (lambda: feed_options(batch_size=0), "batch_size"),
        (lambda: feed_options(seed=-1), "seed"),
        (lambda: feed_options(symbols=[]), "symbols"),
    ]
    for call, field in cases:
        with pytest.raises(Invalid) as err:
            call()
        assert err.value.field == field
    with pytest.raises(Invalid) as err:
        await core.publish(["not a bar"])  # type: ignore[list-item]
    assert err.value.field == "bars"
    assert await core.publish([]) == 0


def test_options_and_instruments_defaults() -> None:
    opts = feed_options(symbols=["MSFT", "ZZZ"], interval=5, speed=2, batch_size=10)
    assert opts.symbols == ("MSFT", "ZZZ") and opts.interval == timedelta(seconds=5)
    assert feed_options().symbols == ("AAPL", "BTC-USD", "ETH-USD", "MSFT")
    instruments = {i.symbol: i for i in feed_instruments(["ZZZ"])}
    assert set(instruments) == {"AAPL", "BTC-USD", "ETH-USD", "MSFT", "ZZZ"}
    assert instruments["ZZZ"].tick_size == Decimal("0.01")
    assert instruments["BTC-USD"].lot_size == Decimal("0.0001")
