"""An in-process fake of the platform's agent WebSocket (protocol v1, docs/agent.md), for tests.

It follows the document: the credential in ``Authorization: Bearer`` or ``?token=``
(a wrong one: accept, then close 4401 ``invalid_credentials``); `hello` answered by
`welcome` with the stored watermark; each `events` frame answered by exactly one `ack`,
`resend` (a gap: nothing stored) or `error` (a malformed or oversized batch: nothing
stored); events at or below the watermark skipped as duplicates; heartbeats every
`heartbeat_seconds`; `command_ack` frames recorded.

Hooks that make trouble on purpose:

- ``enforce_batch``: refuse larger batches with `batch_too_large` (while announcing `max_batch`);
- ``fail_batches``: the n-th events frames overall (from 1) get an `unavailable` error and are
  not stored, as if the database had failed;
- ``close_after_batches`` / ``close_before_ack``: every connection is closed by the server
  after storing that many batches, the last one without its ack when asked;
- ``commands``: command frames sent after every welcome (``repeat_commands`` times each);
- ``after_welcome``: raw text frames sent after every welcome;
- `drop()`: close every open connection from the server side now.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

KINDS = {"order", "fill", "position", "pnl", "log"}
MAX_FRAME = 1024 * 1024


def _aware(at: Any) -> bool:
    try:
        return isinstance(at, str) and datetime.fromisoformat(at).tzinfo is not None
    except ValueError:
        return False


class FakeAgentServer:
    """A protocol v1 server holding everything in memory (see the module docstring)."""

    def __init__(self, *, api_key: str = "test-key", heartbeat_seconds: float = 10.0, max_batch: int = 50,
                 enforce_batch: int | None = None, fail_batches: Sequence[int] = (),
                 close_after_batches: int | None = None, close_before_ack: bool = False,
                 commands: Sequence[dict[str, Any]] = (), repeat_commands: int = 1,
                 after_welcome: Sequence[str] = ()) -> None:
        self.api_key = api_key
        self.heartbeat_seconds = heartbeat_seconds
        self.max_batch = max_batch
        self.enforce_batch = enforce_batch
        self.fail_batches = set(fail_batches)
        self.close_after_batches = close_after_batches
        self.close_before_ack = close_before_ack
        self.commands = list(commands)
        self.repeat_commands = repeat_commands
        self.after_welcome = list(after_welcome)
        self.stored: dict[str, list[dict[str, Any]]] = {}
        self.hellos: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []  # frames the server sent, in order
        self.command_acks: list[dict[str, Any]] = []
        self.heartbeats = 0
        self.batches = 0  # events frames received
        self.duplicates = 0  # events skipped as already stored
        self.refusals: list[float] = []  # monotonic times of 4401 closes
        self.client_closes: list[int | None] = []  # close codes the agent sent
        self._live: set[ServerConnection] = set()
        self._server: Server | None = None
        self.url = ""

    async def __aenter__(self) -> FakeAgentServer:
        self._server = await serve(self._handle, "127.0.0.1", 0)
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/v1/agent/ws"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def watermark(self, agent_id: str) -> int:
        events = self.stored.get(agent_id, [])
        return events[-1]["seq"] if events else 0

    def sent_of(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.sent if f["type"] == kind]

    async def drop(self, code: int = 1012, reason: str = "service restart") -> None:
        """Close every open connection from the server side."""
        await asyncio.gather(*(ws.close(code, reason) for ws in list(self._live)), return_exceptions=True)

    # -- the protocol -----------------------------------------------------------------------

    async def _send(self, ws: ServerConnection, frame: dict[str, Any]) -> None:
        self.sent.append(frame)
        await ws.send(json.dumps(frame))

    async def _error(self, ws: ServerConnection, code: str, message: str, field: str | None = None) -> None:
        await self._send(ws, {"type": "error", "code": code, "message": message, "field": field})

    def _authorized(self, ws: ServerConnection) -> bool:
        assert ws.request is not None
        header = ws.request.headers.get("Authorization", "")
        token = urllib.parse.parse_qs(urllib.parse.urlsplit(ws.request.path).query).get("token", [""])[0]
        return header == f"Bearer {self.api_key}" or token == self.api_key

    async def _handle(self, ws: ServerConnection) -> None:
        if not self._authorized(ws):
            self.refusals.append(time.monotonic())
            await ws.close(4401, "invalid_credentials")
            return
        self._live.add(ws)
        beat = asyncio.create_task(self._beat(ws))
        try:
            await self._session(ws)
        except ConnectionClosed:
            pass
        finally:
            beat.cancel()
            self._live.discard(ws)
            self.client_closes.append(ws.close_code)

    async def _beat(self, ws: ServerConnection) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            await self._send(ws, {"type": "heartbeat", "at": "2024-01-01T00:00:00+00:00"})

    async def _session(self, ws: ServerConnection) -> None:
        agent_id = await self._hello(ws)
        stored_here = 0
        async for text in ws:
            frame = self._json(text)
            kind = frame.get("type") if frame is not None else None
            if frame is None:
                await self._error(ws, "malformed_frame", "the frame is not a JSON object")
            elif kind == "heartbeat":
                self.heartbeats += 1
            elif kind == "command_ack":
                self.command_acks.append(frame)
            elif kind == "events":
                size = len(text.encode() if isinstance(text, str) else text)
                if not await self._events(ws, agent_id, frame, size):
                    continue
                stored_here += 1
                closing = self.close_after_batches is not None and stored_here >= self.close_after_batches
                if not (closing and self.close_before_ack):
                    await self._send(ws, {"type": "ack", "upto": self.watermark(agent_id)})
                if closing:
                    await ws.close(1012, "service restart")
                    return
            elif kind == "hello":
                await self._error(ws, "malformed_frame", "hello comes once per connection", "type")
            else:
                await self._error(ws, "malformed_frame", f"unknown frame type {kind!r}", "type")

    @staticmethod
    def _json(text: str | bytes) -> dict[str, Any] | None:
        try:
            frame = json.loads(text)
        except ValueError:
            return None
        return frame if isinstance(frame, dict) else None

    async def _hello(self, ws: ServerConnection) -> str:
        while True:
            frame = self._json(await ws.recv())
            if frame is None or frame.get("type") != "hello":
                await self._error(ws, "malformed_frame", "the first frame must be a hello", "type")
                continue
            agent_id, name, last_ack = frame.get("agent_id"), frame.get("name"), frame.get("last_ack")
            if not isinstance(agent_id, str) or not agent_id:
                await self._error(ws, "malformed_frame", "agent_id is required", "agent_id")
            elif not isinstance(name, str) or not 1 <= len(name) <= 100:
                await self._error(ws, "malformed_frame", "name must be 1-100 characters", "name")
            elif isinstance(last_ack, bool) or not isinstance(last_ack, int) or last_ack < 0:
                await self._error(ws, "malformed_frame", "last_ack must be an integer >= 0", "last_ack")
            else:
                break
        self.hellos.append(frame)
        await self._send(ws, {"type": "welcome", "agent_id": agent_id, "watermark": self.watermark(agent_id),
                              "heartbeat_seconds": self.heartbeat_seconds, "max_batch": self.max_batch,
                              "protocol": 1})
        for text in self.after_welcome:
            await ws.send(text)
        for command in self.commands:
            for _ in range(self.repeat_commands):
                await self._send(ws, {"type": "command", **command})
        return agent_id

    async def _events(self, ws: ServerConnection, agent_id: str, frame: dict[str, Any], size: int) -> bool:
        """Store a batch per the rules; return True when it was stored (the caller acks), else answer."""
        self.batches += 1
        events = frame.get("events")
        limit = self.enforce_batch or self.max_batch
        if not isinstance(events, list) or not events:
            await self._error(ws, "malformed_frame", "events must be a non-empty list", "events")
            return False
        if len(events) > limit or size > MAX_FRAME:
            await self._error(ws, "batch_too_large", f"at most {limit} events and 1 MiB", "events")
            return False
        for i, event in enumerate(events):
            seq = event.get("seq") if isinstance(event, dict) else None
            if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1 \
                    or event.get("kind") not in KINDS or not _aware(event.get("at")) \
                    or not isinstance(event.get("data"), dict) or (i and seq != events[i - 1]["seq"] + 1):
                await self._error(ws, "malformed_frame", f"events[{i}] is malformed", f"events[{i}]")
                return False
        if self.batches in self.fail_batches:
            await self._error(ws, "unavailable", "the database is unavailable")
            return False
        watermark = self.watermark(agent_id)
        new = [e for e in events if e["seq"] > watermark]
        self.duplicates += len(events) - len(new)
        if new and new[0]["seq"] != watermark + 1:
            await self._send(ws, {"type": "resend", "from": watermark + 1})
            return False
        self.stored.setdefault(agent_id, []).extend(new)
        return True
