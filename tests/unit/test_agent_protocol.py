"""Protocol v1 frames and the agent's configuration file, checked field by field."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from agent import protocol
from agent.config import load_config, parse_config
from agent.outbox import Event
from trading.errors import Invalid


def test_the_agent_frames_are_json_objects_with_a_type() -> None:
    hello = json.loads(protocol.hello("a-1", "laptop", "0.1.0", 7))
    assert hello == {"type": "hello", "agent_id": "a-1", "name": "laptop", "version": "0.1.0", "last_ack": 7}
    batch = json.loads(protocol.events([Event(1, "log", "2024-01-01T00:00:00+00:00", {"m": "x"})]))
    assert batch == {"type": "events", "events": [{"seq": 1, "kind": "log", "at": "2024-01-01T00:00:00+00:00",
                                                   "data": {"m": "x"}}]}
    beat = json.loads(protocol.heartbeat())
    assert beat["type"] == "heartbeat" and datetime.fromisoformat(beat["at"]).tzinfo is not None
    ack = json.loads(protocol.command_ack("c-1", "failed", "x" * 2000))
    assert ack["status"] == "failed" and len(ack["detail"]) == 1000


def test_server_frames_are_parsed_or_refused_naming_the_field() -> None:
    welcome = protocol.parse('{"type": "welcome", "agent_id": "a", "watermark": 3, "heartbeat_seconds": 5,'
                             ' "max_batch": 100}')
    assert welcome == protocol.Welcome("a", 3, 5.0, 100)
    assert protocol.parse('{"type": "welcome", "agent_id": "a", "watermark": 0, "max_batch": 1}') \
        == protocol.Welcome("a", 0, None, 1)
    assert protocol.parse('{"type": "ack", "upto": 9}') == protocol.Ack(9)
    assert protocol.parse('{"type": "resend", "from": 4}') == protocol.Resend(4)
    assert protocol.parse('{"type": "command", "command_id": "c", "command": "kill_switch"}') \
        == protocol.Command("c", "kill_switch", {})
    assert protocol.parse('{"type": "error", "code": "batch_too_large", "message": "at most 10"}') \
        == protocol.Error("batch_too_large", "at most 10", None)
    for text, field in [('{"type": "ack", "upto": -1}', "upto"), ('{"type": "ack", "upto": true}', "upto"),
                        ('{"type": "resend", "from": 0}', "from"),
                        ('{"type": "welcome", "agent_id": "a", "watermark": 0, "max_batch": 0}', "max_batch"),
                        ('{"type": "welcome", "agent_id": "a", "watermark": 0, "max_batch": 5,'
                         ' "heartbeat_seconds": 0}', "heartbeat_seconds"),
                        ('{"type": "command", "command_id": "", "command": "x"}', "command_id"),
                        ('{"type": "command", "command_id": "c", "command": "x", "args": [1]}', "args"),
                        ('{"type": "nope"}', "type"), ("[]", None), ("{", None)]:
        with pytest.raises(protocol.ProtocolError) as refused:
            protocol.parse(text)
        assert refused.value.field == field, text


def test_a_configuration_file_is_read_with_its_defaults(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("name: laptop\nseed: 3\ninterval_seconds: 30\nspeed: 2\nstart: 2024-02-01\n"
                    "fee_bps: 1.5\nheartbeat_seconds: 5\nbackoff: {initial: 1, maximum: 8}\n"
                    "bots:\n  - name: sma-btc\n    strategy: sma_crossover\n    symbols: [BTC-USD]\n"
                    "    params: {fast: 5, slow: 20, quantity: 0.01}\n"
                    "    capital: 2500\n    status: stopped\n")
    config = load_config(path)
    assert (config.name, config.seed, config.speed) == ("laptop", 3, 2.0)
    assert config.interval == timedelta(seconds=30)
    assert config.start == datetime(2024, 2, 1, tzinfo=UTC) and config.fee_bps == Decimal("1.5")
    assert (config.backoff.initial, config.backoff.maximum, config.backoff.reset_after) == (1.0, 8.0, 30.0)
    [(bot, status)] = config.bots
    assert (bot.name, bot.capital, status) == ("sma-btc", Decimal(2500), "stopped")
    assert parse_config(None).bots == () and parse_config({}).speed == 1.0


@pytest.mark.parametrize(("raw", "field"), [
    ({"speed": 0}, "speed"), ({"interval_seconds": 0.5}, "interval_seconds"), ({"seed": -1}, "seed"),
    ({"colour": "red"}, "colour"), ({"backoff": {"initial": 5, "maximum": 1}}, "backoff.initial"),
    ({"bots": [{"name": "x", "symbols": ["AAPL"]}]}, "bots[0].strategy"),
    ({"bots": [{"name": "bad name", "strategy": "breakout", "symbols": ["AAPL"]}]}, "bots[0].name"),
    ({"bots": [{"name": "x", "strategy": "breakout", "symbols": ["AAPL"], "capital": 0}]}, "bots[0].capital"),
    ({"bots": [{"name": "x", "strategy": "breakout", "symbols": ["AAPL"], "params": {"lookback": 0}}]},
     "bots[0].params.lookback"),
    ({"bots": [{"name": "x", "strategy": "breakout", "symbols": ["AAPL"]}] * 2}, "bots"),
    ({"start": "yesterday"}, "start"),
])
def test_a_bad_configuration_names_the_field(raw: dict[str, object], field: str) -> None:
    with pytest.raises(Invalid) as refused:
        parse_config(raw)
    assert refused.value.field == field


def test_an_unreadable_configuration_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Invalid):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("bots: [unclosed\n")
    with pytest.raises(Invalid) as refused:
        load_config(bad)
    assert refused.value.field == "config"
