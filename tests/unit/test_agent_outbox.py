"""The agent's SQLite outbox: sequence numbers, the ack watermark, bots, commands, readers."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from agent.config import BotConfig
from agent.outbox import CommandResult, Outbox, writer_lock
from trading.errors import Conflict, Invalid


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "agent.db"


def test_a_new_database_has_an_agent_id_that_survives_reopening(db: Path) -> None:
    with Outbox(db) as first:
        agent_id = first.agent_id
        assert first.next_seq() == 1 and first.acked() == 0
    with Outbox(db) as again:
        assert again.agent_id == agent_id
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_append_numbers_events_from_one_without_gaps(db: Path) -> None:
    with Outbox(db) as outbox:
        at = datetime(2024, 1, 1, tzinfo=UTC)
        seqs = [outbox.append("log", {"i": i}, at=at) for i in range(5)]
        assert seqs == [1, 2, 3, 4, 5]
        events = outbox.pending()
        assert [e.seq for e in events] == seqs
        assert events[0].to_frame() == {"seq": 1, "kind": "log", "at": "2024-01-01T00:00:00+00:00",
                                        "data": {"i": 0}}
        assert [e.seq for e in outbox.pending(after=2, limit=2)] == [3, 4]


def test_a_sequence_number_is_never_reused_after_pruning_and_reopening(db: Path) -> None:
    with Outbox(db) as outbox:
        for i in range(3):
            outbox.append("log", {"i": i})
        assert outbox.ack(3) == 3
        assert outbox.pending() == [] and outbox.stats().pending == 0  # every event pruned
    with Outbox(db) as outbox:
        assert outbox.append("log", {"i": 3}) == 4  # not 1, although the table is empty
        assert outbox.ack(4) == 4
    with Outbox(db) as outbox:
        assert outbox.append("fill", {"i": 4}) == 5
        assert outbox.stats().next_seq == 6


def test_ack_only_grows_and_is_capped_at_the_last_event(db: Path) -> None:
    with Outbox(db) as outbox:
        for i in range(5):
            outbox.append("log", {"i": i})
        assert outbox.ack(3) == 3
        assert [e.seq for e in outbox.pending()] == [4, 5]
        assert outbox.ack(1) == 3  # lower: no change
        assert outbox.ack(99) == 5  # beyond what was made: capped
        assert outbox.acked() == 5
        with pytest.raises(Invalid):
            outbox.ack(-1)


def test_kinds_and_data_are_validated(db: Path) -> None:
    with Outbox(db) as outbox:
        for kind in ("order", "fill", "position", "pnl", "log"):
            outbox.append(kind, {})
        with pytest.raises(Invalid) as bad_kind:
            outbox.append("trade", {})
        assert bad_kind.value.field == "kind"
        with pytest.raises(Invalid):
            outbox.append("log", ["not", "a", "mapping"])  # type: ignore[arg-type]
        with pytest.raises(Invalid):
            outbox.append("log", {}, at=datetime(2024, 1, 1))  # naive
        with pytest.raises(Invalid):
            outbox.append("log", {"big": "x" * 70_000})
        assert outbox.next_seq() == 6  # refused events take no number


def test_decimals_and_times_are_stored_as_text(db: Path) -> None:
    with Outbox(db) as outbox:
        outbox.append("pnl", {"cash": Decimal("1.50"), "ts": datetime(2024, 1, 1, tzinfo=UTC)})
        assert outbox.pending()[0].data == {"cash": "1.50", "ts": "2024-01-01T00:00:00+00:00"}


def test_a_failed_transaction_keeps_nothing_and_reuses_no_number(db: Path) -> None:
    with Outbox(db) as outbox:
        with pytest.raises(RuntimeError), outbox.transaction():
            outbox.append("log", {"i": 1})
            outbox.append("log", {"i": 2})
            raise RuntimeError("boom")
        assert outbox.pending() == [] and outbox.next_seq() == 1
        assert outbox.append("log", {"i": 3}) == 1  # nothing was ever stored under 1


def test_listeners_hear_of_committed_events_once_per_transaction(db: Path) -> None:
    heard: list[int] = []
    with Outbox(db) as outbox:
        outbox.add_listener(heard.append)
        outbox.append("log", {})
        with outbox.transaction():
            outbox.append("log", {})
            outbox.append("log", {})
            assert heard == [1]  # not before the commit
        outbox.set_clock(datetime(2024, 1, 1, tzinfo=UTC))  # no events: no call
        outbox.remove_listener(heard.append)
        outbox.append("log", {})
    assert heard == [1, 3]


def test_stats_name_the_oldest_pending_event(db: Path) -> None:
    with Outbox(db) as outbox:
        outbox.append("log", {}, at=datetime(2024, 1, 1, tzinfo=UTC))
        outbox.append("log", {}, at=datetime(2024, 1, 2, tzinfo=UTC))
        outbox.ack(1)
        stats = outbox.stats()
        assert (stats.agent_id, stats.next_seq, stats.acked, stats.pending) == (outbox.agent_id, 3, 1, 1)
        assert (stats.oldest_pending_seq, stats.oldest_pending_at) == (2, "2024-01-02T00:00:00+00:00")


def test_bots_keep_their_configuration_and_status(db: Path) -> None:
    config = BotConfig(name="sma-1", strategy="sma_crossover", symbols=("BTC-USD",),
                       params={"fast": 2, "slow": 5}, capital=Decimal(500))
    with Outbox(db) as outbox:
        assert outbox.save_bot(config).status == "running"
        outbox.set_bot_status("sma-1", "stopped", "strategy error")
        changed = BotConfig(name="sma-1", strategy="sma_crossover", symbols=("ETH-USD",))
        saved = outbox.save_bot(changed)  # no status given: kept
        assert (saved.status, saved.error, saved.config) == ("stopped", "strategy error", changed)
        outbox.save_bot_state("sma-1", {"cash": "1"})
    with Outbox(db) as outbox:
        assert [b.config.name for b in outbox.bots()] == ["sma-1"]
        assert outbox.bot_state("sma-1") == {"cash": "1"}
        assert outbox.bot("nope") is None
        with pytest.raises(Invalid):
            outbox.set_bot_status("nope", "running")


def test_a_command_result_is_remembered(db: Path) -> None:
    with Outbox(db) as outbox:
        assert outbox.command_result("c-1") is None
        outbox.record_command("c-1", "stop_bot", {"bot": "x"}, CommandResult("failed", "unknown bot"))
    with Outbox(db) as outbox:
        assert outbox.command_result("c-1") == CommandResult("failed", "unknown bot")


def test_a_reader_never_sees_a_half_written_state_while_a_writer_appends(db: Path) -> None:
    Outbox(db).close()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with Outbox(db) as writer:
                for i in range(300):
                    with writer.transaction():
                        writer.append("log", {"i": i})
                        writer.append("pnl", {"i": i})
                    if i % 50 == 49:
                        writer.ack(writer.next_seq() - 1)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=write)
    with Outbox(db, readonly=True) as reader:
        thread.start()
        last = 0
        while thread.is_alive():
            stats = reader.stats()
            assert stats.next_seq >= last
            assert (stats.next_seq - 1) % 2 == 0  # both events of a transaction, or neither
            assert stats.acked + stats.pending == stats.next_seq - 1
            last = stats.next_seq
        thread.join()
        assert not errors
        assert reader.stats().next_seq == 601
        with pytest.raises(Conflict):
            reader.append("log", {})


def test_a_read_only_outbox_needs_an_existing_database(tmp_path: Path) -> None:
    with pytest.raises(Invalid) as missing:
        Outbox(tmp_path / "none.db", readonly=True)
    assert missing.value.field == "db"
    assert not (tmp_path / "none.db").exists()


def test_only_one_writer_process_holds_the_lock(db: Path) -> None:
    with writer_lock(db), pytest.raises(Conflict), writer_lock(db):
        pass
    with writer_lock(db):
        pass


def test_a_file_that_is_not_an_agent_database_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    for readonly in (False, True):
        with pytest.raises(Invalid) as refused:
            Outbox(junk, readonly=readonly)
        assert refused.value.field == "db"
