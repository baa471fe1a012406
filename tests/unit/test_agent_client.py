"""The agent's WebSocket client against an in-process fake of the platform (protocol v1)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent.backoff import Backoff
from agent.client import AgentClient
from agent.config import BackoffConfig, BotConfig
from agent.outbox import Outbox
from agent.runner import Runner
from tests.agent_fake_server import FakeAgentServer
from trading.errors import Invalid

KEY = "sk-agent-test-5f3a9c"
FAST = BackoffConfig(initial=0.01, maximum=0.05, reset_after=5.0)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for a condition")
        await asyncio.sleep(0.01)


def fake_server(**kwargs: object) -> FakeAgentServer:
    return FakeAgentServer(api_key=KEY, **kwargs)  # type: ignore[arg-type]


def client_for(outbox: Outbox, server: FakeAgentServer, **kwargs: object) -> AgentClient:
    options: dict[str, object] = {"name": "test-agent", "backoff": Backoff(FAST, rng=random.Random(1)),
                                  "poll_seconds": 0.05}
    options.update(kwargs)
    return AgentClient(outbox, server.url, str(options.pop("api_key", KEY)), **options)  # type: ignore[arg-type]


class Running:
    """A client running in the background until the block ends."""

    def __init__(self, client: AgentClient) -> None:
        self.client = client
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AgentClient:
        self.task = asyncio.create_task(self.client.run(self.stop))
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    with Outbox(tmp_path / "agent.db") as box:
        yield box


def fill(outbox: Outbox, start: int, stop: int) -> None:
    for i in range(start, stop):
        outbox.append("log", {"i": i})


def assert_stored_once_in_order(server: FakeAgentServer, outbox: Outbox, count: int) -> None:
    stored = server.stored[outbox.agent_id]
    assert [e["seq"] for e in stored] == list(range(1, count + 1))
    assert [e["data"]["i"] for e in stored] == list(range(count))
    assert outbox.acked() == count and outbox.stats().pending == 0


async def test_events_arrive_once_and_in_order_across_server_closes(outbox: Outbox) -> None:
    fill(outbox, 0, 40)
    async with fake_server(max_batch=6, close_after_batches=2, close_before_ack=True) as server, \
            Running(client_for(outbox, server)) as client:
        for i in range(40, 80):  # more events while it syncs
            outbox.append("log", {"i": i})
            await asyncio.sleep(0.002)
        await until(lambda: outbox.acked() == 80)
    assert_stored_once_in_order(server, outbox, 80)
    assert client.connections >= 5  # every connection was cut after two batches
    assert all(h["last_ack"] <= server.watermark(outbox.agent_id) for h in server.hellos)
    assert server.duplicates == 0  # after each welcome the agent went on from the server's watermark
    assert server.client_closes[-1] == 1000  # a clean close when told to stop


async def test_new_events_are_sent_promptly_while_connected(outbox: Outbox) -> None:
    async with fake_server() as server, Running(client_for(outbox, server, poll_seconds=30)) as client:
        await until(lambda: client.connections == 1)
        started = time.monotonic()
        fill(outbox, 0, 3)
        await until(lambda: outbox.acked() == 3)
        assert time.monotonic() - started < 2  # woken by the outbox, not by the 30 s poll
    assert_stored_once_in_order(server, outbox, 3)


async def test_a_batch_the_server_failed_is_sent_again_after_the_gap(outbox: Outbox) -> None:
    fill(outbox, 0, 40)
    async with fake_server(max_batch=5, fail_batches=[2]) as server, \
            Running(client_for(outbox, server, window=4)) as client:
        await until(lambda: outbox.acked() == 40)
    assert_stored_once_in_order(server, outbox, 40)
    assert client.connections == 1
    assert [f["code"] for f in server.sent_of("error")] == ["unavailable"]
    resends = server.sent_of("resend")  # for the batches already on their way behind the gap
    assert 1 <= len(resends) <= 4 and {r["from"] for r in resends} == {6}
    assert server.duplicates == 0  # one rewind only: the stale resends were ignored


async def test_a_resend_from_the_server_rewinds_the_agent(outbox: Outbox) -> None:
    fill(outbox, 0, 12)
    unsolicited = json.dumps({"type": "resend", "from": 1})
    async with fake_server(max_batch=4, after_welcome=[unsolicited]) as server, \
            Running(client_for(outbox, server)):
        await until(lambda: outbox.acked() == 12)
    assert_stored_once_in_order(server, outbox, 12)


async def test_batches_the_server_finds_too_large_are_split(outbox: Outbox) -> None:
    fill(outbox, 0, 50)
    async with fake_server(max_batch=40, enforce_batch=7) as server, \
            Running(client_for(outbox, server)) as client:
        await until(lambda: outbox.acked() == 50)
    assert_stored_once_in_order(server, outbox, 50)
    assert client.connections == 1
    assert client.batch_cap is not None and client.batch_cap <= 7


async def test_errors_and_unreadable_frames_never_crash_the_client(outbox: Outbox,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    fill(outbox, 0, 5)
    junk = ["not json", json.dumps({"type": "surprise"}), json.dumps([1, 2]),
            json.dumps({"type": "error", "code": "malformed_frame", "message": "heartbeat at is bad",
                        "field": "at"}),
            json.dumps({"type": "ack", "upto": -3})]
    with caplog.at_level(logging.WARNING, logger="agent.client"):
        async with fake_server(after_welcome=junk) as server, Running(client_for(outbox, server)) as client:
            await until(lambda: outbox.acked() == 5)
            fill(outbox, 5, 10)
            await until(lambda: outbox.acked() == 10)
    assert_stored_once_in_order(server, outbox, 10)
    assert client.connections == 1
    assert "malformed_frame" in caplog.text and "cannot read" in caplog.text


async def test_heartbeats_go_both_ways(outbox: Outbox) -> None:
    async with fake_server(heartbeat_seconds=0.05) as server, Running(client_for(outbox, server)) as client:
        await until(lambda: server.heartbeats >= 4 and len(server.sent_of("heartbeat")) >= 4)
        await asyncio.sleep(0.3)  # longer than 3 heartbeats: the server's keep the connection alive
    assert client.connections == 1


async def test_a_refused_credential_backs_off_to_the_maximum(outbox: Outbox,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    backoff = Backoff(BackoffConfig(initial=0.01, maximum=0.3, reset_after=5.0), rng=random.Random(1))
    with caplog.at_level(logging.DEBUG):
        async with FakeAgentServer(api_key="the-right-key") as server, \
                Running(client_for(outbox, server, backoff=backoff)) as client:
            await until(lambda: len(server.refusals) >= 2)
    assert client.last_close == (4401, "invalid_credentials")
    assert backoff.delays[0] == 0.3
    assert server.refusals[1] - server.refusals[0] >= 0.29
    assert client.connections == 0
    agent_side = [r.getMessage() for r in caplog.records if not r.name.startswith("websockets.server")]
    assert any("Authorization: Bearer ***" in line for line in agent_side)  # websockets' debug log, redacted
    assert not any(KEY in line for line in agent_side) and KEY not in repr(client)


async def test_connection_failures_back_off_with_full_jitter(outbox: Outbox) -> None:
    backoff = Backoff(BackoffConfig(initial=0.01, maximum=0.04, reset_after=5.0), rng=random.Random(7))
    client = AgentClient(outbox, "ws://127.0.0.1:9/v1/agent/ws", KEY, name="x", backoff=backoff)
    async with Running(client):
        await until(lambda: len(backoff.delays) >= 6)
    ceilings = [0.01, 0.02, 0.04, 0.04, 0.04, 0.04]
    assert all(0 <= d <= c for d, c in zip(backoff.delays, ceilings, strict=False))
    backoff.connected_for(5.0)
    assert backoff.attempt == 0


async def test_a_command_delivered_twice_is_done_once_and_answered_each_time(outbox: Outbox) -> None:
    runner = Runner(outbox, seed=1)
    runner.configure([(BotConfig(name="sma", strategy="sma_crossover", symbols=("BTC-USD",)), None)])
    command = {"command_id": "5b0d6a4e-0000-4000-8000-000000000001", "command": "stop_bot",
               "args": {"bot": "sma"}}
    async with fake_server(commands=[command], repeat_commands=2) as server, \
            Running(client_for(outbox, server, commands=runner)) as client:
        await until(lambda: len(server.command_acks) == 2)
        await server.drop()  # the platform restarts and delivers the command again
        await until(lambda: len(server.command_acks) == 4 and client.connections == 2)
        await until(lambda: outbox.stats().pending == 0)
    acks = {(a["command_id"], a["status"], a["detail"]) for a in server.command_acks}
    assert acks == {(command["command_id"], "done", "bot sma stopped; 0 open order(s) canceled")}
    synced = server.stored[outbox.agent_id]
    stops = [e for e in synced if e["kind"] == "log" and e["data"]["message"].startswith("bot sma stopped")]
    assert len(stops) == 1
    assert runner.running == []


async def test_commands_without_a_runner_fail_politely(outbox: Outbox) -> None:
    command = {"command_id": "c-1", "command": "kill_switch", "args": {"reason": "test"}}
    async with fake_server(commands=[command]) as server, Running(client_for(outbox, server)):
        await until(lambda: len(server.command_acks) == 1)
    assert server.command_acks[0]["status"] == "failed"


def test_the_client_checks_its_arguments(outbox: Outbox) -> None:
    with pytest.raises(Invalid) as bad_url:
        AgentClient(outbox, "https://example.com/v1/agent/ws", KEY, name="x")
    assert bad_url.value.field == "server"
    with pytest.raises(Invalid):
        AgentClient(outbox, "wss://example.com/v1/agent/ws", " ", name="x")
    with pytest.raises(Invalid):
        AgentClient(outbox, "wss://example.com/v1/agent/ws", KEY, name="")


async def test_stopping_does_not_wait_for_a_server_that_never_answers(outbox: Outbox) -> None:
    silent = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    client = AgentClient(outbox, f"ws://127.0.0.1:{port}/v1/agent/ws", KEY, name="x", open_timeout=30)
    try:
        running = Running(client)
        await running.__aenter__()
        await asyncio.sleep(0.2)  # connecting, the handshake never answered
        started = time.monotonic()
        await running.__aexit__()
        assert time.monotonic() - started < 1
    finally:
        silent.close()
