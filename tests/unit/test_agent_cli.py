"""The `atp-agent` command line: errors name the option, status and outbox read a live database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import BotConfig
from agent.outbox import Outbox
from agent.runner import Runner
from trading.errors import Invalid

ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-cli-secret-93b1"


def fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_errors_name_the_option_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATP_AGENT_API_KEY", raising=False)
    db = str(tmp_path / "a.db")
    assert "--server" in fails(["run", "--db", db], capsys)
    assert "--api-key" in fails(["run", "--db", db, "--server", "wss://h/v1/agent/ws"], capsys)
    assert "--server" in fails(["run", "--db", db, "--server", "https://h", "--api-key", SECRET], capsys)
    assert "--db" in fails(["status", "--db", db], capsys)  # no database there
    assert "--limit" in fails(["outbox", "--db", db, "--limit", "0"], capsys)
    config = tmp_path / "agent.yaml"
    config.write_text("bots:\n  - {name: x, strategy: no_such_strategy, symbols: [BTC-USD]}\n")
    err = fails(["run", "--offline", "--db", db, "--config", str(config)], capsys)
    assert "--config" in err and "bots[0].strategy" in err
    config.write_text("bots: [{name: x, strategy: sma_crossover, symbols: [BTC-USD],"
                      " params: {fast: 9, slow: 3}}]")
    assert "bots[0].params.fast" in fails(["run", "--offline", "--db", db, "--config", str(config)], capsys)
    config.write_text("speed: -1\n")
    assert "speed" in fails(["run", "--offline", "--db", db, "--config", str(config)], capsys)
    assert not Path(db).exists()  # nothing was created by a refused command


def test_status_and_outbox_read_the_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "a.db"
    with Outbox(db) as outbox:
        runner = Runner(outbox, seed=2, start=datetime(2024, 1, 1, tzinfo=UTC))
        runner.configure([(BotConfig(name="sma", strategy="sma_crossover", symbols=("BTC-USD",)), None)])
        for _ in range(5):
            runner.step()
        outbox.ack(3)
        agent_id, made = outbox.agent_id, outbox.next_seq() - 1
    assert main(["status", "--db", str(db)]) == 0
    text = capsys.readouterr().out
    assert agent_id in text and f"pending:       {made - 3}" in text and "sma" in text and "running" in text
    assert main(["status", "--db", str(db), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["acked"], report["pending"], report["next_seq"]) == (3, made - 3, made + 1)
    assert report["bots"][0]["name"] == "sma" and report["bots"][0]["status"] == "running"
    assert main(["outbox", "--db", str(db), "--limit", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [4, 5]


def test_run_trades_without_a_connection_and_stops_on_sigint(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    config = tmp_path / "agent.yaml"
    config.write_text("speed: 50\nstart: 2024-01-01T00:00:00Z\nbackoff: {initial: 0.05, maximum: 0.2}\n"
                      "bots:\n  - {name: sma, strategy: sma_crossover, symbols: [BTC-USD],"
                      " params: {fast: 2, slow: 3, quantity: '0.01'}}\n")
    env = {**os.environ, "ATP_AGENT_API_KEY": SECRET}
    agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--server", "ws://127.0.0.1:9/v1/agent/ws",
                              "--db", str(db), "--config", str(config), "--name", "laptop"],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert agent.poll() is None, agent.communicate()[0]
            try:
                with Outbox(db, readonly=True) as outbox:
                    if outbox.stats().next_seq > 40:
                        break
            except Invalid:
                pass  # not created yet
            assert time.monotonic() < deadline, "the agent made no events"
            time.sleep(0.1)
        agent.send_signal(signal.SIGINT)
        output, _ = agent.communicate(timeout=10)
    finally:
        if agent.poll() is None:
            agent.kill()
    assert agent.returncode == 0, output
    assert SECRET not in output
    assert "cannot connect" in output  # it tried, and traded anyway
    with Outbox(db, readonly=True) as outbox:
        kinds = {e.kind for e in outbox.pending(limit=10_000)}
    assert {"order", "fill", "position", "pnl", "log"} <= kinds
